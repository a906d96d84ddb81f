// The demo client app: an ordinary integrator page on /sdk.js. Its "backend" is the
// broker's demo routes (/demo/api/...), which hold the demo API key server-side. Every
// address is relative to the page, so the demo works under a proxy's path prefix too
// (/idv/demo calls /idv/demo/api/...).
(function () {
  'use strict';

  var $ = function (id) {
    return document.getElementById(id);
  };
  var startButton = $('start');
  var qrCard = $('qr-card');
  var qr = $('qr');
  var link = $('verify-link');
  var statusEl = $('status');
  var transportEl = $('transport');
  var sessionIdEl = $('session-id');
  var expiresEl = $('expires');
  var refreshNote = $('refresh-note');
  var outcome = $('outcome');
  var outcomeText = $('outcome-text');
  var decisionEl = $('decision');
  var sharedEl = $('shared-data');
  var filesEl = $('files');
  var startNote = $('start-note');
  var qrDone = $('qr-done');

  var flow = null;
  var sessionsSeen = 0;

  function ttlFromQuery() {
    var raw = new URLSearchParams(location.search).get('ttl');
    var n = raw === null ? NaN : parseInt(raw, 10);
    return isFinite(n) && n > 0 ? n : null;
  }

  function apiError(res, body, what) {
    var message = body && body.error && body.error.message ? body.error.message : 'HTTP ' + res.status;
    return new Error(what + ': ' + message);
  }

  function readJson(res) {
    return res.json().catch(function () {
      return null;
    });
  }

  // onSessionIdResolver: the app backend creates the session and hands back id, token and url.
  function createSession() {
    var body = {};
    var ttl = ttlFromQuery();
    if (ttl) body.ttl_seconds = ttl;
    return fetch('demo/api/sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    }).then(function (res) {
      return readJson(res).then(function (json) {
        if (!res.ok) throw apiError(res, json, 'could not start a session');
        return json;
      });
    });
  }

  // handleVerify: the app backend reads the decision (its API key never reaches this page).
  function readDecision(session) {
    return fetch('demo/api/sessions/' + encodeURIComponent(session.session_id) + '/decision', {
      headers: { Authorization: 'Bearer ' + session.session_token },
      cache: 'no-store',
    }).then(function (res) {
      return readJson(res).then(function (json) {
        if (!res.ok) throw apiError(res, json, 'could not read the decision');
        return json;
      });
    });
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function setStatus(status) {
    statusEl.textContent = status;
    statusEl.className = 'status-pill status-' + status;
  }

  function showOutcome(text, kind) {
    // The code belongs to a finished session: nobody should scan it any more.
    qr.classList.add('is-finished');
    qrDone.hidden = false;
    outcome.hidden = false;
    outcome.className = 'card outcome outcome-' + kind;
    outcomeText.textContent = text;
    startButton.disabled = false;
    startButton.textContent = 'Start again';
    outcome.focus();
  }

  function showDecision(decision) {
    clear(sharedEl);
    clear(filesEl);
    var shared = decision.shared_data || {};
    Object.keys(shared).forEach(function (key) {
      var dt = document.createElement('dt');
      dt.textContent = key;
      var dd = document.createElement('dd');
      dd.textContent = shared[key];
      dd.setAttribute('data-testid', 'shared-' + key);
      sharedEl.appendChild(dt);
      sharedEl.appendChild(dd);
    });
    if (decision.user_id) {
      var dt = document.createElement('dt');
      dt.textContent = 'user_id';
      var dd = document.createElement('dd');
      dd.textContent = decision.user_id + (decision.issuer ? ' (' + decision.issuer + ')' : '');
      sharedEl.appendChild(dt);
      sharedEl.appendChild(dd);
    }
    (decision.files || []).forEach(function (f) {
      var li = document.createElement('li');
      li.setAttribute('data-testid', 'file-' + f.kind);
      li.textContent = f.kind + ': ' + f.content_type + ', ' + f.size + ' bytes';
      filesEl.appendChild(li);
    });
    if (!(decision.files || []).length) {
      var none = document.createElement('li');
      none.textContent = 'none';
      filesEl.appendChild(none);
    }
    decisionEl.hidden = false;
  }

  function start() {
    if (flow) flow.stop();
    sessionsSeen = 0;
    startButton.disabled = true;
    startNote.hidden = true;
    outcome.hidden = true;
    decisionEl.hidden = true;
    refreshNote.hidden = true;
    qrCard.hidden = false;
    qr.classList.remove('is-finished');
    qrDone.hidden = true;
    qr.setAttribute('aria-busy', 'true');
    transportEl.textContent = 'connecting';

    flow = window.IdvBroker.start({
      qrElement: qr,
      qrTestId: 'qr',
      // The demo's sessions have a binding: the SDK shows the number here, large, once
      // the phone opened the session (the default display; onBindingCode replaces it).
      bindingElement: $('binding'),
      onSessionIdResolver: createSession,
      handleVerify: readDecision,
      onSession: function (session) {
        sessionsSeen += 1;
        link.href = session.url;
        sessionIdEl.textContent = session.session_id;
        expiresEl.textContent = session.expires_at ? new Date(session.expires_at).toLocaleTimeString() : '';
        if (session.expires_at) expiresEl.setAttribute('datetime', session.expires_at);
        qr.setAttribute('aria-busy', 'false');
        if (sessionsSeen > 1) {
          refreshNote.hidden = false;
          refreshNote.textContent =
            'The previous code expired before it was used; this is a new one (' + (sessionsSeen - 1) + ' refreshed).';
        }
      },
      onStatus: setStatus,
      onTransport: function (kind) {
        transportEl.textContent = kind;
      },
      onSuccess: function (decision) {
        showDecision(decision);
        showOutcome('Verified: the person approved on their phone.', 'success');
      },
      onError: function (err) {
        if (err.code === 'qr_failed') {
          clear(qr);
          var p = document.createElement('p');
          p.textContent = 'The QR code could not be loaded; use the link below.';
          qr.appendChild(p);
          return;
        }
        var words = {
          declined: 'The person declined on their phone. Nothing was shared.',
          expired: 'The code expired before the person decided.',
          cancelled: 'The session was cancelled.',
          verify_failed: 'Approved on the phone, but ' + ((err.cause && err.cause.message) || err.message) + '.',
          session_failed: err.message,
          network: 'Connection problem: ' + err.message,
          blocked: 'Cannot reach the broker from this page: ' + err.message,
        };
        if (err.code === 'declined' && err.session) {
          // The decision says why: a person's deny, or the number typed wrong too often.
          readDecision(err.session).then(
            function (decision) {
              var text = decision.reason === 'binding_mismatch'
                ? 'The number typed on the phone did not match this screen three times: the session was ended for safety.'
                : words.declined;
              showOutcome(text, 'failure');
            },
            function () {
              showOutcome(words.declined, 'failure');
            }
          );
          return;
        }
        showOutcome(words[err.code] || err.message, err.code === 'network' || err.code === 'blocked' ? 'error' : 'failure');
      },
    });
  }

  startButton.addEventListener('click', start);
  if (!window.IdvBroker) {
    startButton.disabled = true;
    startNote.hidden = false;
    startNote.textContent = 'The SDK (/sdk.js) did not load.';
  }
})();
