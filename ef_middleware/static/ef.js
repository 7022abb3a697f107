/*! ef.js (ef_middleware): conversions and the visitor's time zone */
(function (w, d) {
  'use strict';
  try {
    var script = d.currentScript || d.querySelector('script[data-endpoint]') || {};
    var data = script.dataset || {};
    var base = data.endpoint || '/_ef/';
    var tzCookie = data.tzCookie || 'ef_tz';
    var nav = w.navigator || {};
    var off = data.gpc === 'true' && nav.globalPrivacyControl === true;
    // Keep the inline stub's object and queue.
    var ef = (w.ef = w.ef || {});
    var q = (ef.q = ef.q || []);
    if (ef.loaded) return;
    ef.loaded = true;
    ef.optedOut = off;

    var send = function (loop, value) {
      if (off || typeof loop !== 'string' || !loop) return false;
      var body = { loop: loop };
      // A finite number or decimal string (blank: none): a typo must not give the top reward.
      if (typeof value === 'string') {
        value = value.trim();
        value = !value ? null : /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(value) ? +value : NaN;
      }
      if (value != null) {
        if (typeof value !== 'number' || !isFinite(value)) return false;
        body.value = value;
      }
      body = JSON.stringify(body);
      var url = base + 'reward', sent;
      try {
        sent = w.fetch(url, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: body,
          keepalive: true,
          credentials: 'same-origin'
        }) || 1;
      } catch (e) { /* no fetch, or it threw: a beacon */ }
      if (sent) {
        try {
          sent.then(null, function () {});
        } catch (e) { /* a wrapper gave no promise: sent */ }
        return true;
      }
      try {
        return nav.sendBeacon(url, new Blob([body], { type: 'application/json' }));
      } catch (e) {
        return false;
      }
    };

    // ef.convert("hero") or ef.convert("hero", 25)
    ef.convert = function (loop, value) {
      try {
        return send(loop, value);
      } catch (e) {
        return false;
      }
    };

    var run = function (command) {
      try {
        command = [].slice.call(command);
        if (command[0] === 'convert') ef.convert(command[1], command[2]);
      } catch (e) { /* never throw into the page */ }
    };
    while (q.length) run(q.shift());
    q.push = function () {
      for (var i = 0; i < arguments.length; i++) run(arguments[i]);
      return 0;
    };

    // <a data-ef-convert="hero" data-ef-value="1">: clicks (forms: submits; links: middle
    // clicks too) convert once: not again within a second by that element, nor by a submit
    // within a second of a click that converted the loop.
    var lastEl, lastAt, clicked = {};
    var auto = function (event) {
      try {
        var type = event.type, now = Date.now();
        if (event.detail > 1 || (type === 'auxclick' && event.button !== 1)) return;
        // The composed path: in a shadow root, event.target is the host.
        var path = event.composedPath ? event.composedPath() : [], el, link, n, i;
        if (!path.length) for (n = event.target; n; n = n.parentNode) path.push(n);
        for (i = 0; i < path.length; i++) {
          n = path[i];
          if (!el && n.getAttribute && n.getAttribute('data-ef-convert') != null) el = n;
          if (n.tagName === 'A' && n.href) link = n;
        }
        if (!el || (type === 'submit') !== (el.tagName === 'FORM')) return;
        if (type === 'auxclick' && !link) return;
        // An invalid form submits nothing (checkValidity() would fire its events).
        var form = (el.type === 'submit' || el.type === 'image') && el.form;
        if (form && !form.noValidate && !el.formNoValidate && form.matches(':invalid')) return;
        if (el === lastEl && Math.abs(now - lastAt) < 1000) return;
        lastEl = el;
        lastAt = now;
        var loops = (el.getAttribute('data-ef-convert') || '').split(/[\s,]+/), loop;
        for (i = 0; i < loops.length; i++) {
          loop = loops[i];
          if (!loop || (type === 'submit' && now - clicked[loop] < 1000)) continue;
          if (type !== 'submit') clicked[loop] = now;
          send(loop, el.getAttribute('data-ef-value'));
        }
      } catch (e) { /* never throw into the page */ }
    };
    d.addEventListener('click', auto, true);
    d.addEventListener('auxclick', auto, true);
    d.addEventListener('submit', auto, true);

    // The visitor's IANA time zone: their local hour and weekday for the server, for the
    // site's cookie domain (data-cookie-domain) when its cookies span subdomains.
    var same = ';samesite=lax' + (w.location.protocol === 'https:' ? ';secure' : '');
    var domain = data.cookieDomain ? ';domain=' + data.cookieDomain : '';
    var attrs = ';path=/' + domain + same;
    // A page cannot tell this host's own cookie from the shared one: with a domain, the
    // host's (written before the domain was set) goes first, and the shared one is written
    // if none is left.
    if (domain && d.cookie.indexOf(tzCookie + '=') >= 0) {
      d.cookie = tzCookie + '=;path=/' + same + ';max-age=0';
    }
    if (off) {
      if (d.cookie.indexOf(tzCookie + '=') >= 0) d.cookie = tzCookie + '=' + attrs + ';max-age=0';
    } else {
      var tz = w.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
      var cookies = ';' + d.cookie.replace(/\s/g, '') + ';';
      if (tz && /^[\w+\-\/]{1,64}$/.test(tz) && cookies.indexOf(';' + tzCookie + '=' + tz + ';') < 0) {
        d.cookie = tzCookie + '=' + tz + attrs + ';max-age=31536000';
      }
    }
  } catch (e) { /* never throw into the page */ }
})(window, document);
