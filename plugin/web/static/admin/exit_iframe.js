// Shopify loaded the install address inside its admin: the grant screen can't be framed, so open
// the same address in the top window (App Bridge carries `open(url, "_top")` out of the frame).
// The link on the page does the same for a merchant whose browser runs no script.
(function () {
  "use strict";
  function go() {
    var link = document.getElementById("continue");
    if (link) window.open(link.href, "_top");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go);
  else go();
})();
