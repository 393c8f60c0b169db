/*! Couponry storefront script: reveals a recipient's code from a signed claim link (?couponry=<token>)
 * and nudges while the basket misses the code's rules. Plain JS, no build step, no eval, no inline
 * styles or scripts (styles are a constructable stylesheet in a shadow root), so it runs under a
 * strict Content-Security-Policy: allow this script's origin in script-src and the API in connect-src.
 *
 *   Shopify (App Proxy, no key):  <script src=".../couponry.js" data-proxy="/apps/couponry" defer></script>
 *   Elsewhere (storefront key):   <script src="https://APP/storefront/couponry.js" data-key="cpy_..." defer></script>
 *
 * Baskets: Shopify's /cart.js is read by the script; other platforms hand theirs over with
 * window.couponry.basket({currency, lines: [{product_id, quantity, unit_price}]}) (minor units). */
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || window.couponry) return;
  var data = me.dataset;
  var proxy = data.proxy ? data.proxy.replace(/\/$/, "") : null;
  var key = data.key || null;
  var api = (data.api || new URL(me.src, location.href).origin).replace(/\/$/, "");
  var shopify = !!proxy || data.platform === "shopify";
  var STORE = "couponry:claim";
  var state = { token: null, code: null, basket: null, timer: 0, seq: 0 };
  var ui = null;

  var CSS =
    ":host{all:initial}" +
    ".bar{position:fixed;left:0;right:0;bottom:0;z-index:2147483000;display:flex;flex-wrap:wrap;gap:.5rem 1rem;" +
    "align-items:center;justify-content:center;padding:.75rem 1rem;background:#111;color:#fff;" +
    "font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;box-shadow:0 -2px 8px rgba(0,0,0,.25)}" +
    ".bar.top{top:0;bottom:auto}" +
    ".code{font:600 1.05rem ui-monospace,Menlo,Consolas,monospace;letter-spacing:.06em;padding:.2rem .6rem;" +
    "border:1px dashed #bbb;border-radius:.3rem;user-select:all}" +
    "button{font:inherit;cursor:pointer;border:0;border-radius:.3rem;padding:.35rem .8rem;background:#fff;color:#111}" +
    "button.x{background:transparent;color:#fff;font-size:1.2rem;padding:0 .4rem}" +
    ".nudge{flex-basis:100%;text-align:center;font-size:.95rem}.nudge:empty{display:none}";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  function money(minor, currency) {
    var lang = document.documentElement.lang || navigator.language || "en";
    try {
      var digits = new Intl.NumberFormat("en", { style: "currency", currency: currency }).resolvedOptions()
        .maximumFractionDigits;
      return new Intl.NumberFormat(lang, { style: "currency", currency: currency }).format(minor / Math.pow(10, digits));
    } catch (e) {
      return minor + " " + currency;
    }
  }

  // The sentence for a validation answer: the discount, a nudge, or the shopper message.
  function nudge(answer) {
    if (answer.valid) {
      var d = answer.discount;
      return d && d.amount > 0 ? "Your code takes " + money(d.amount, d.currency) + " off this basket"
        : "Your code applies to this basket";
    }
    var s = answer.shopper || {};
    var details = s.details || {};
    if (s.reason === "minimum_subtotal_not_met" && details.missing_amount > 0 && details.currency) {
      return "Spend " + money(details.missing_amount, details.currency) + " more to use your code";
    }
    if ((s.reason === "minimum_quantity_not_met" || s.reason === "bundle_not_met") && details.missing_quantity > 0) {
      var n = details.missing_quantity;
      return n === 1 ? "Add one more item to use your code" : "Add " + n + " more items to use your code";
    }
    return s.message || "";
  }

  function request(method, path, body) {
    var url = proxy ? proxy + path : api + "/api/v1" + path;
    var headers = { Accept: "application/json" };
    if (body) headers["Content-Type"] = "application/json";
    if (!proxy) headers.Authorization = "Bearer " + key;
    return fetch(url, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined,
      credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw j;
          return j;
        });
      });
  }

  function reveal(token) {
    return request("GET", (proxy ? "/claims/" : "/storefront/claims/") + encodeURIComponent(token));
  }

  function check(basket) {
    // Through the App Proxy the basket rides in the query, which Shopify signs with the request.
    if (proxy) {
      return request("GET", "/claims/" + encodeURIComponent(state.token) + "/check?basket=" +
        encodeURIComponent(JSON.stringify(basket)));
    }
    return request("POST", "/validate", { code: state.code, basket: basket });
  }

  function render() {
    if (ui) return ui;
    var host = el("div");
    host.setAttribute("data-couponry", "");
    var root = host.attachShadow({ mode: "open" });
    if ("adoptedStyleSheets" in root && window.CSSStyleSheet) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    }
    var bar = el("div", "bar" + (data.position === "top" ? " top" : ""));
    bar.setAttribute("role", "region");
    bar.setAttribute("aria-label", "Your discount code");
    var code = el("span", "code");
    var copy = el("button", "copy", "Copy");
    copy.type = "button";
    copy.addEventListener("click", function () {
      var done = function () { copy.textContent = "Copied"; };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(state.code).then(done, function () { select(code) && done(); });
      } else if (select(code)) done();
    });
    var close = el("button", "x", "\u00d7");
    close.type = "button";
    close.setAttribute("aria-label", "Hide");
    close.addEventListener("click", function () { host.remove(); });
    var line = el("div", "nudge");
    line.setAttribute("role", "status");
    line.setAttribute("aria-live", "polite");
    bar.append(el("span", "label", "Your code"), code, copy);
    if (shopify) {
      var apply = el("button", "apply", "Apply to cart");
      apply.type = "button";
      apply.addEventListener("click", function () {
        // Shopify's shareable discount URL puts the code on the cart, then returns to this page.
        location.assign("/discount/" + encodeURIComponent(state.code) + "?redirect=" +
          encodeURIComponent(location.pathname + location.search));
      });
      bar.append(apply);
    }
    bar.append(close, line);
    root.append(bar);
    document.body.append(host);
    ui = { code: code, line: line };
    return ui;
  }

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  function show(message) {
    render().line.textContent = message;
  }

  // Shopify's Ajax cart: prices are in the currency's minor units, like ours.
  function shopifyBasket() {
    return fetch("/cart.js", { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (cart) {
        return {
          currency: cart.currency,
          lines: (cart.items || []).map(function (i) {
            var line = { product_id: String(i.product_id), variant_id: String(i.variant_id), quantity: i.quantity,
              unit_price: i.price };
            if (i.sku) line.sku = i.sku;
            return line;
          })
        };
      });
  }

  function refresh() {
    clearTimeout(state.timer);
    state.timer = setTimeout(function () {
      if (!state.code || data.nudges === "false") return;
      var basket = state.basket ? Promise.resolve(state.basket) : shopify ? shopifyBasket() : Promise.resolve(null);
      var seq = ++state.seq;
      basket.then(function (b) {
        if (!b) return null;
        return check(b).then(function (answer) {
          if (seq === state.seq) show(nudge(answer));
        });
      }).catch(function (problem) {
        if (seq === state.seq && problem && problem.detail) show(problem.detail);
      });
    }, 150);
  }

  function remember(token, code) {
    state.token = token;
    state.code = code;
    render().code.textContent = code;
    try { localStorage.setItem(STORE, JSON.stringify({ token: token, code: code })); } catch (e) { /* private mode */ }
    refresh();
  }

  function start() {
    var params = new URLSearchParams(location.search);
    var token = params.get("couponry");
    if (token) {
      // The link is personal: take it out of the address bar (and of what the page shares).
      params.delete("couponry");
      var rest = params.toString();
      history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
      reveal(token).then(function (claim) { remember(token, claim.code); }, function (problem) {
        show((problem && problem.detail) || "This link can't be used here.");
      });
      return;
    }
    var saved = null;
    try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { saved = null; }
    if (saved && saved.token && saved.code) remember(saved.token, saved.code);
  }

  window.couponry = {
    // The page's basket (minor units); the script checks the code against it at once.
    basket: function (basket) {
      state.basket = basket;
      refresh();
    },
    refresh: refresh
  };
  document.addEventListener("couponry:basket", function (e) { window.couponry.basket(e.detail); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  if (shopify && window.PerformanceObserver) {
    // Themes change the cart through Shopify's Ajax endpoints: re-check after each.
    try {
      new PerformanceObserver(function (list) {
        if (list.getEntries().some(function (e) { return /\/cart\/(add|change|update|clear)/.test(e.name); })) {
          state.basket = null;
          refresh();
        }
      }).observe({ type: "resource", buffered: false });
    } catch (e) { /* older browsers: visibility and page loads still refresh */ }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
