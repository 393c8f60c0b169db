// Couponry admin: every htmx request carries the embedded surface's credential.
// Shopify: a fresh ID token from App Bridge (htmx 2 uses XHR, which App Bridge does not decorate).
// BigCommerce: the short-lived signed token the page was rendered with.
// Standalone: the session cookie goes by itself; the CSRF token rides in a header too.
(function () {
  "use strict";
  var freshToken = null;

  function session() {
    return document.getElementById("couponry-session");
  }

  document.addEventListener("htmx:confirm", function (evt) {
    if (!(window.shopify && typeof window.shopify.idToken === "function")) return;
    evt.preventDefault();
    var question = evt.detail.question; // hx-confirm: asked here, since the request below skips it
    if (question && !window.confirm(question)) return;
    window.shopify.idToken().then(function (token) {
      freshToken = token;
      evt.detail.issueRequest(true);
    });
  });

  document.addEventListener("htmx:configRequest", function (evt) {
    var s = session();
    var headers = evt.detail.headers;
    if (freshToken) {
      headers["Authorization"] = "Bearer " + freshToken;
      freshToken = null;
    } else if (s && s.dataset.token) {
      headers["Authorization"] = "Bearer " + s.dataset.token;
    }
    if (s && s.dataset.csrf) headers["X-CSRF-Token"] = s.dataset.csrf;
  });
})();
