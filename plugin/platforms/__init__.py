"""Shop platforms: installs and uninstalls, the connector for a shop, and the sync jobs that
make the platform discount follow the campaign (push, follow, deactivate). Imports campaigns,
shops, the store and `connectors`."""
