"""Admin pages, one module each, each with a `routes` list of `plugin.web.admin.routing.page(...)`
routes (paths relative to /admin). Add a module's name to PAGES in plugin/web/admin/__init__.py."""
