/*! idv-broker browser SDK: the client-app side of the QR data-transfer flow.
 *
 * Plain ES2019, no dependencies, no build step. Load it with
 *   <script src="https://<broker>/sdk.js"></script>
 * and call `IdvBroker.start({...})`. Reference: docs/sdk.md.
 *
 * The flow, per session:
 *   onSessionIdResolver() -> your backend creates a session, hands back {session_id, session_token, url}
 *   -> the QR (qr.svg, fetched with the session token in a header and shown through a blob: URL)
 *   -> live status over WebSocket (long-poll when WebSockets fail), resumed with after_seq
 *   -> a session with "binding": "code", once the phone opened it: the number to type on the
 *      phone, to onBindingCode(code), or by default shown large beside the QR
 *   -> confirmed: handleVerify(session) -> onSuccess(result)
 *   -> declined / cancelled / failure: onError(error)
 *   -> a broker this page may not reach (another origin not listed with --allowed-origin,
 *      or nothing there): onError({code: 'blocked'}) at once, never a silent wait
 *   -> expired before the phone decided: a new session from onSessionIdResolver, a new QR, no reload.
 */
(function (global) {
  'use strict';

  var VERSION = '1.0.0';
  var TERMINAL = { confirmed: true, declined: true, expired: true, cancelled: true };

  /** Codes after which the flow goes on: the next status tells the page where it is. */
  var RECOVERABLE = { qr_failed: true };

  /** An error handed to `onError`; `code` says which kind (see docs/sdk.md). */
  function IdvError(code, message, details) {
    var err = new Error(message);
    err.name = 'IdvError';
    err.code = code;
    err.recoverable = !!RECOVERABLE[code];
    if (details) {
      if (details.session) err.session = details.session;
      if (details.status !== undefined) err.status = details.status;
      if (details.cause !== undefined) err.cause = details.cause;
      if (details.broker !== undefined) err.broker = details.broker;
      if (details.origin !== undefined) err.origin = details.origin;
    }
    return err;
  }

  /**
   * The broker's address: where this script was loaded from, path included (a broker
   * behind a proxy under https://www.bank.example/idv serves /idv/sdk.js), else the
   * page's own origin.
   */
  var scriptBase = (function () {
    try {
      var s = global.document && global.document.currentScript;
      if (s && s.src) {
        var u = new URL(s.src, global.location.href);
        return u.origin + u.pathname.replace(/\/[^/]*$/, '');
      }
    } catch (e) {
      /* fall through to the page origin */
    }
    return global.location ? global.location.origin : '';
  })();

  function noop() {}

  /** Exponential backoff with full jitter: a random wait in [base/2, base] with base doubling. */
  function backoffDelay(attempt, baseMs, maxMs) {
    var ceiling = Math.min(maxMs, baseMs * Math.pow(2, attempt));
    return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
  }

  function retryAfterMs(response) {
    var raw = response && response.headers && response.headers.get('Retry-After');
    var secs = raw ? parseInt(raw, 10) : NaN;
    return isFinite(secs) && secs >= 0 ? Math.min(secs, 60) * 1000 : 0;
  }

  function errorMessageOf(response, body) {
    if (body && body.error && typeof body.error.message === 'string') return body.error.message;
    return 'the broker answered ' + response.status;
  }

  /**
   * Starts the flow. Returns a handle: `stop()`, `restart()`, and `session` (the current one).
   * @param {object} options see docs/sdk.md
   */
  function start(options) {
    var opts = options || {};
    if (typeof opts.onSessionIdResolver !== 'function') {
      throw new TypeError('IdvBroker.start: onSessionIdResolver must be a function');
    }
    var container = opts.qrElement;
    if (typeof container === 'string') container = global.document.querySelector(container);

    var baseUrl = String(opts.baseUrl || scriptBase).replace(/\/+$/, '');
    var pageOrigin = global.location ? global.location.origin : '';
    var transportPref = opts.transport || 'auto'; // 'auto' | 'websocket' | 'long-poll'
    var refreshOnExpiry = opts.refreshOnExpiry !== false;
    var maxRefreshes = typeof opts.maxRefreshes === 'number' ? opts.maxRefreshes : 10;
    var maxRetries = typeof opts.maxRetries === 'number' ? opts.maxRetries : 8;
    var backoffBaseMs = typeof opts.backoffBaseMs === 'number' ? opts.backoffBaseMs : 500;
    var backoffMaxMs = typeof opts.backoffMaxMs === 'number' ? opts.backoffMaxMs : 15000;
    var pollWaitSeconds = typeof opts.pollWaitSeconds === 'number' ? opts.pollWaitSeconds : 25;
    var qrTestId = opts.qrTestId === undefined ? 'qr' : opts.qrTestId;
    var qrAlt = opts.qrAlt || 'QR code: scan it with your phone to continue there';
    var bindingElement = opts.bindingElement;
    if (typeof bindingElement === 'string') bindingElement = global.document.querySelector(bindingElement);

    var cb = {
      onStatus: opts.onStatus || noop,
      onSession: opts.onSession || noop,
      onSuccess: opts.onSuccess || noop,
      onError: opts.onError || noop,
      onTransport: opts.onTransport || noop,
      onBindingCode: typeof opts.onBindingCode === 'function' ? opts.onBindingCode : null,
    };

    // One flow, many sessions over time: `generation` grows with each session (and on stop),
    // and every async continuation checks it, so nothing of an old session acts on a new one.
    var generation = 0;
    var stopped = false;
    var session = null; // {session_id, session_token, url, status, seq, expires_at, ...}
    var lastSeq = null;
    var refreshes = 0;
    var failures = 0; // consecutive failed connections of the current transport
    var wsFailures = 0; // consecutive WebSockets that closed without a frame
    var useLongPoll = transportPref === 'long-poll' || typeof global.WebSocket !== 'function';
    var socket = null;
    var pollAbort = null;
    var timer = null;
    var qrUrl = null;
    var verifying = false;
    var transport = null; // what onTransport last said
    var shownCode = null; // the binding code on screen (or handed to onBindingCode)
    var codeBox = null; // the default display of the code, when the SDK made one
    // Whether the browser ever handed this flow an answer of the broker (any status, or
    // a WebSocket frame). Until it has, a request that fails without one was blocked
    // (CORS: this page's origin is not admitted) or the broker is not there: `blocked`.
    var reached = false;
    // Whether the current long-poll run had an answer: its first poll asks with wait=0,
    // so `long-poll` is announced only once a poll was answered, and at once.
    var pollAnswered = false;

    function announce(kind) {
      if (kind === transport) return;
      transport = kind;
      safe(cb.onTransport, [kind, session]);
    }

    function safe(fn, args) {
      try {
        fn.apply(null, args);
      } catch (e) {
        if (global.console) global.console.error('IdvBroker callback threw', e);
      }
    }

    function teardownTransport() {
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      if (socket) {
        var s = socket;
        socket = null;
        s.onopen = s.onmessage = s.onerror = s.onclose = null;
        try {
          s.close(1000);
        } catch (e) {
          /* already closed */
        }
      }
      if (pollAbort) {
        pollAbort.abort();
        pollAbort = null;
      }
    }

    function fail(code, message, details) {
      teardownTransport();
      safe(cb.onError, [IdvError(code, message, details)]);
    }

    /**
     * The phone opened a session with a binding: the person types this number there. The
     * app's onBindingCode gets it; without one, the SDK shows it large, in a live region
     * (screen readers announce it), in `bindingElement` or right after the QR.
     */
    function showCode(gen, code) {
      if (gen !== generation || typeof code !== 'string' || code === shownCode) return;
      shownCode = code;
      session.binding_code = code;
      if (cb.onBindingCode) {
        safe(cb.onBindingCode, [code, session]);
        return;
      }
      var doc = global.document;
      if (!doc || (!bindingElement && !container)) return;
      hideCode();
      var box = doc.createElement('div');
      box.className = 'idv-binding';
      box.setAttribute('role', 'status');
      var label = doc.createElement('span');
      label.className = 'idv-binding-label';
      label.textContent = 'Type this number on your phone: ';
      var digits = doc.createElement('strong');
      digits.className = 'idv-binding-code';
      digits.setAttribute('data-testid', 'binding-code');
      digits.textContent = code;
      box.appendChild(label);
      box.appendChild(digits);
      if (bindingElement) {
        while (bindingElement.firstChild) bindingElement.removeChild(bindingElement.firstChild);
        bindingElement.appendChild(box);
      } else if (container.parentNode) {
        container.parentNode.insertBefore(box, container.nextSibling);
      }
      codeBox = box;
    }

    /** The number is of no use once the session is over, or replaced. */
    function hideCode() {
      if (codeBox && codeBox.parentNode) codeBox.parentNode.removeChild(codeBox);
      codeBox = null;
    }

    /** A request the browser answered without a response, before any ever came back. */
    function blocked(gen, what, cause) {
      if (gen !== generation || stopped) return;
      generation += 1; // nothing of this flow acts after it (a late QR or poll answer)
      fail(
        'blocked',
        'the browser got no answer from the broker at ' + baseUrl + ' for ' + what + ' from this page (' +
          pageOrigin + '): start the broker with --allowed-origin ' + pageOrigin +
          ', serve this page on the broker\'s origin, or check that the broker is reachable at that address',
        { session: session, broker: baseUrl, origin: pageOrigin, cause: cause }
      );
    }

    function newSession() {
      teardownTransport();
      hideCode();
      shownCode = null;
      var gen = ++generation;
      verifying = false;
      failures = 0;
      pollAnswered = false;
      var resolved;
      try {
        resolved = Promise.resolve(opts.onSessionIdResolver());
      } catch (e) {
        resolved = Promise.reject(e);
      }
      resolved.then(
        function (s) {
          if (gen !== generation) return;
          if (!s || typeof s.session_id !== 'string' || typeof s.session_token !== 'string') {
            fail('session_failed', 'onSessionIdResolver must resolve to {session_id, session_token, url}');
            return;
          }
          session = s;
          lastSeq = typeof s.seq === 'number' ? s.seq : null;
          safe(cb.onSession, [session]);
          // Without a known seq the first snapshot or poll answer brings the status.
          if (lastSeq !== null) safe(cb.onStatus, [s.status || 'initialized', session]);
          renderQr(gen);
          // A session that is already over (say, an idempotent replay) has nothing to wait for.
          if (lastSeq !== null && TERMINAL[s.status]) finish(gen, s.status);
          else connect(gen);
        },
        function (e) {
          if (gen !== generation) return;
          fail('session_failed', 'could not create a session: ' + ((e && e.message) || e), { cause: e });
        }
      );
    }

    function renderQr(gen) {
      if (!container) return;
      var s = session;
      fetch(baseUrl + '/v1/sessions/' + encodeURIComponent(s.session_id) + '/qr.svg', {
        headers: { Authorization: 'Bearer ' + s.session_token },
        cache: 'no-store',
      })
        .then(function (res) {
          reached = true;
          if (!res.ok) throw new Error('qr.svg answered ' + res.status);
          return res.blob();
        })
        .then(function (blob) {
          if (gen !== generation) return;
          var img = global.document.createElement('img');
          var url = URL.createObjectURL(blob);
          img.src = url;
          img.alt = qrAlt;
          img.className = 'idv-qr';
          img.setAttribute('data-session-id', s.session_id);
          if (qrTestId) img.setAttribute('data-testid', qrTestId);
          while (container.firstChild) container.removeChild(container.firstChild);
          container.appendChild(img);
          if (qrUrl) URL.revokeObjectURL(qrUrl);
          qrUrl = url;
        })
        .catch(function (e) {
          if (gen !== generation || stopped) return;
          if (!reached && e instanceof TypeError) {
            blocked(gen, 'the QR code', e);
            return;
          }
          // A session that moved on needs no QR: no error may outlast its news.
          if (s.status && s.status !== 'initialized') return;
          // Not fatal: the status feed goes on (its next status is the page's news), and the
          // app can still offer the session's link.
          safe(cb.onError, [IdvError('qr_failed', 'could not load the QR code', { session: s, cause: e })]);
        });
    }

    function connect(gen) {
      if (gen !== generation || stopped) return;
      if (useLongPoll) poll(gen);
      else openSocket(gen);
    }

    function retry(gen, waitMs) {
      if (gen !== generation || stopped) return;
      failures += 1;
      // A poll after a failure asks at once again: its answer says the connection is back.
      pollAnswered = false;
      if (failures > maxRetries) {
        fail('network', 'lost the connection to the broker', { session: session });
        return;
      }
      announce('reconnecting');
      var delay = Math.max(waitMs || 0, backoffDelay(failures - 1, backoffBaseMs, backoffMaxMs));
      timer = setTimeout(function () {
        timer = null;
        connect(gen);
      }, delay);
    }

    /** Applies one observed state (a frame or a poll answer); drives the outcome. */
    function observe(gen, status, seq) {
      if (gen !== generation || typeof seq !== 'number') return;
      if (lastSeq !== null && seq <= lastSeq) return;
      lastSeq = seq;
      session.status = status;
      session.seq = seq;
      if (TERMINAL[status]) hideCode();
      safe(cb.onStatus, [status, session]);
      if (TERMINAL[status]) finish(gen, status);
    }

    function finish(gen, status) {
      teardownTransport();
      var s = session;
      if (status === 'confirmed') {
        if (verifying) return;
        verifying = true;
        if (typeof opts.handleVerify !== 'function') {
          safe(cb.onSuccess, [s, s]);
          return;
        }
        var p;
        try {
          p = Promise.resolve(opts.handleVerify(s));
        } catch (e) {
          p = Promise.reject(e);
        }
        p.then(
          function (result) {
            if (gen === generation) safe(cb.onSuccess, [result, s]);
          },
          function (e) {
            if (gen === generation) {
              safe(cb.onError, [
                IdvError('verify_failed', 'handleVerify failed: ' + ((e && e.message) || e), {
                  session: s,
                  cause: e,
                }),
              ]);
            }
          }
        );
      } else if (status === 'expired' && refreshOnExpiry && refreshes < maxRefreshes) {
        refreshes += 1;
        newSession();
      } else {
        var words = {
          declined: 'the person declined on their phone',
          expired: 'the session expired before the person decided',
          cancelled: 'the session was cancelled',
        };
        safe(cb.onError, [IdvError(status, words[status], { session: s, status: status })]);
      }
    }

    function openSocket(gen) {
      var s = session;
      var wsBase = baseUrl.replace(/^http/, 'ws');
      var url =
        wsBase +
        '/v1/sessions/' +
        encodeURIComponent(s.session_id) +
        '/ws?token=' +
        encodeURIComponent(s.session_token) +
        (lastSeq !== null ? '&after_seq=' + lastSeq : '');
      var ws;
      try {
        ws = new global.WebSocket(url);
      } catch (e) {
        wsFailed(gen, false);
        return;
      }
      socket = ws;
      var gotFrame = false;
      // A handshake that hangs counts as a failure too.
      var openTimer = setTimeout(function () {
        if (socket === ws && ws.readyState !== 1) {
          ws.onclose = null;
          socket = null;
          try {
            ws.close();
          } catch (e) {
            /* not open */
          }
          wsFailed(gen, false);
        }
      }, 10000);
      ws.onopen = function () {
        clearTimeout(openTimer);
      };
      ws.onmessage = function (ev) {
        if (socket !== ws) return;
        var frame;
        try {
          frame = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        if (!gotFrame) {
          gotFrame = true;
          reached = true;
          failures = 0;
          wsFailures = 0;
          announce('websocket');
        }
        if (frame.type === 'snapshot') {
          if (frame.expires_at) session.expires_at = frame.expires_at;
          // With after_seq, every later transition follows as a `status` frame; only a
          // subscription without a known seq takes the snapshot as its starting point.
          if (lastSeq === null) observe(gen, frame.status, frame.seq);
        } else if (frame.type === 'status') {
          observe(gen, frame.status, frame.seq);
        }
        if (frame.binding_code && !TERMINAL[session.status]) showCode(gen, frame.binding_code);
      };
      ws.onerror = function () {
        /* onclose follows and decides */
      };
      ws.onclose = function () {
        clearTimeout(openTimer);
        if (socket !== ws) return;
        socket = null;
        if (gen !== generation || stopped) return;
        if (session && TERMINAL[session.status]) return;
        wsFailed(gen, gotFrame);
      };
    }

    function wsFailed(gen, hadFrames) {
      if (gen !== generation || stopped) return;
      if (!hadFrames) wsFailures += 1;
      // Nothing ever came back from the broker: ask once over HTTP, which tells a broker
      // that refuses this page (or is not there) from WebSockets that are blocked on the way.
      if (!reached) probe(gen);
      else afterWsFailure(gen);
    }

    function afterWsFailure(gen) {
      // Two sockets in a row that never delivered a frame: WebSockets do not work from here
      // (a proxy, a firewall, a blocked upgrade). Long-poll carries the same states.
      if (transportPref !== 'websocket' && wsFailures >= 2) {
        useLongPoll = true;
        failures = 0;
        connect(gen);
        return;
      }
      retry(gen, 0);
    }

    /** One status request at once (wait=0), before anything reached the broker. */
    function probe(gen) {
      var s = session;
      fetch(baseUrl + '/v1/sessions/' + encodeURIComponent(s.session_id) + '/status', {
        headers: { Authorization: 'Bearer ' + s.session_token },
        cache: 'no-store',
      }).then(
        function (res) {
          if (gen !== generation || stopped) return;
          reached = true;
          if (res.ok) {
            return res.json().then(function (body) {
              if (gen !== generation || stopped) return;
              observe(gen, body.status, body.seq);
              if (body.binding_code && !TERMINAL[session.status]) showCode(gen, body.binding_code);
              if (!TERMINAL[session.status]) afterWsFailure(gen);
            });
          }
          if (res.status === 429 || res.status >= 500) {
            retry(gen, retryAfterMs(res));
            return;
          }
          refused(gen, s, res);
        },
        function (e) {
          if (gen !== generation || stopped) return;
          blocked(gen, 'the session\'s status', e);
        }
      );
    }

    /** 401/403/404/400 on the status route: retrying will not help. */
    function refused(gen, s, res) {
      return res
        .json()
        .catch(function () {
          return null;
        })
        .then(function (body) {
          if (gen !== generation || stopped) return;
          fail('network', 'status request refused: ' + errorMessageOf(res, body), {
            session: s,
            status: res.status,
          });
        });
    }

    function poll(gen) {
      var s = session;
      var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
      pollAbort = ctrl;
      var url =
        baseUrl +
        '/v1/sessions/' +
        encodeURIComponent(s.session_id) +
        '/status?wait=' +
        // Without a known seq, or before this run of polls was answered, ask for the
        // current state at once: the first answer says long-poll works from here.
        (lastSeq !== null && pollAnswered ? pollWaitSeconds + '&after_seq=' + lastSeq : '0');
      fetch(url, {
        headers: { Authorization: 'Bearer ' + s.session_token },
        cache: 'no-store',
        signal: ctrl ? ctrl.signal : undefined,
      })
        .then(function (res) {
          if (gen !== generation || stopped) return null;
          reached = true;
          if (res.ok) {
            return res.json().then(function (body) {
              if (gen !== generation || stopped) return;
              pollAbort = null;
              failures = 0;
              pollAnswered = true;
              announce('long-poll');
              observe(gen, body.status, body.seq);
              if (body.binding_code && !TERMINAL[session.status]) showCode(gen, body.binding_code);
              if (!TERMINAL[session.status]) poll(gen);
            });
          }
          pollAbort = null;
          if (res.status === 429 || res.status >= 500) {
            retry(gen, retryAfterMs(res));
            return null;
          }
          return refused(gen, s, res);
        })
        .catch(function (e) {
          if (gen !== generation || stopped) return;
          if (e && e.name === 'AbortError') return;
          pollAbort = null;
          if (!reached) {
            blocked(gen, 'the session\'s status', e);
            return;
          }
          retry(gen, 0);
        });
    }

    var handle = {
      /** Stops everything: the socket, the poll, pending retries; no callback fires after. */
      stop: function () {
        stopped = true;
        generation += 1;
        teardownTransport();
        hideCode();
        if (qrUrl) {
          URL.revokeObjectURL(qrUrl);
          qrUrl = null;
        }
      },
      /** Drops the current session and asks onSessionIdResolver for a new one. */
      restart: function () {
        stopped = false;
        refreshes = 0;
        wsFailures = 0;
        reached = false;
        newSession();
      },
    };
    Object.defineProperty(handle, 'session', {
      get: function () {
        return session;
      },
    });
    newSession();
    return handle;
  }

  global.IdvBroker = { start: start, version: VERSION, IdvError: IdvError };
})(typeof window !== 'undefined' ? window : this);
