// Shopify session-token bounce: the page was loaded without an `id_token`; ask App Bridge for a
// fresh one and load the same address with it (App Bridge has read the api key from the <meta>).
(function () {
  "use strict";
  function go() {
    window.shopify.idToken().then(function (token) {
      var url = new URL(window.location.href);
      url.searchParams.set("id_token", token);
      window.location.replace(url.toString());
    });
  }
  if (window.shopify && window.shopify.idToken) go();
  else document.addEventListener("DOMContentLoaded", go);
})();
