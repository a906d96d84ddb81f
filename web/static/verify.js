// The hosted device page: the session url (/verify/{id}) opens here on the phone.
// Device token: from the fragment (#token=<jwt>, never sent to any server in a URL),
// else, in demo mode (the broker marks the page's body with data-demo), a demo token
// for a fresh demo user, which the demo gives for its own sessions only.
(function () {
  'use strict';

  var MAX_UPLOAD_BYTES = 5 * 1024 * 1024;
  var FILE_SCOPES = { selfie: true, document_front: true, document_back: true };

  // Plain words for scopes people meet often; anything else is its name made readable.
  var SCOPE_WORDS = {
    full_name: 'Your full name',
    first_name: 'Your first name',
    given_name: 'Your first name',
    last_name: 'Your last name',
    family_name: 'Your last name',
    date_of_birth: 'Your date of birth',
    email: 'Your email address',
    phone_number: 'Your phone number',
    phone: 'Your phone number',
    address: 'Your postal address',
    nationality: 'Your nationality',
    document_number: 'Your ID document number',
    selfie: 'A selfie: a photo of your face',
    document_front: 'A photo of the front of your ID document',
    document_back: 'A photo of the back of your ID document',
  };
  var FIELD_LABELS = {
    full_name: 'Full name',
    first_name: 'First name',
    given_name: 'First name',
    last_name: 'Last name',
    family_name: 'Last name',
    date_of_birth: 'Date of birth',
    email: 'Email address',
    phone_number: 'Phone number',
    phone: 'Phone number',
    address: 'Postal address',
    selfie: 'Selfie',
    document_front: 'Front of your ID document',
    document_back: 'Back of your ID document',
  };
  var AUTOCOMPLETE = {
    full_name: 'name',
    first_name: 'given-name',
    given_name: 'given-name',
    last_name: 'family-name',
    family_name: 'family-name',
    date_of_birth: 'bday',
    email: 'email',
    phone_number: 'tel',
    phone: 'tel',
    address: 'street-address',
    nationality: 'country-name',
  };

  var $ = function (id) {
    return document.getElementById(id);
  };
  var els = {
    title: $('title'),
    loading: $('loading'),
    problem: $('problem'),
    problemTitle: $('problem-title'),
    problemText: $('problem-text'),
    form: $('form'),
    requester: $('requester'),
    scopes: $('scopes'),
    expiryLine: $('expiry-line'),
    summary: $('error-summary'),
    summaryText: $('error-summary-text'),
    bindingSet: $('fields-binding'),
    bindingInput: $('binding-input'),
    bindingError: $('binding-input-error'),
    bindingHelp: $('binding-help'),
    shownOn: $('shown-on'),
    valuesSet: $('fields-values'),
    valueFields: $('value-fields'),
    filesSet: $('fields-files'),
    fileFields: $('file-fields'),
    approve: $('approve'),
    deny: $('deny'),
    result: $('result'),
    resultTitle: $('result-title'),
    status: $('status'),
    resultText: $('result-text'),
    redirectLine: $('redirect-line'),
    redirectLink: $('redirect-link'),
  };

  var sessionId = decodeURIComponent(location.pathname.replace(/\/+$/, '').split('/').pop() || '');
  // The broker's root: what comes before /verify/{id}; behind a proxy that serves the
  // broker under a path (--public-url https://www.bank.example/idv) it is that path.
  var root = location.pathname.replace(/\/verify\/[^/]*\/?$/, '');
  var apiBase = root + '/v1/sessions/' + encodeURIComponent(sessionId);
  var storageKey = 'idv-device-token:' + sessionId;
  var token = null;
  var info = null;
  var uploads = {}; // kind -> {state: 'empty'|'uploading'|'done'|'error', xhr}
  var busy = false;
  var finished = false;
  var expiryTimer = null;
  var binding = false; // the session needs the number shown on the other screen

  function words(scope) {
    if (SCOPE_WORDS[scope]) return SCOPE_WORDS[scope];
    var s = scope.replace(/_/g, ' ');
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  function label(scope) {
    if (FIELD_LABELS[scope]) return FIELD_LABELS[scope];
    return words(scope);
  }

  function sizeInWords(bytes) {
    if (bytes < 1024) return bytes + ' bytes';
    if (bytes < 1024 * 1024) return Math.round(bytes / 1024) + ' KB';
    // Rounded up, so a file just over the limit never reads as "5.0 MB".
    return (Math.ceil((bytes / (1024 * 1024)) * 10) / 10).toFixed(1) + ' MB';
  }

  /** What an HTTP error means for the person holding the phone. */
  function explain(status, body, what) {
    var code = body && body.error && body.error.code;
    switch (status) {
      case 0:
        return 'The connection was lost' + (what ? ' while ' + what : '') + '. Check your network and try again.';
      case 400:
        return 'The request was not accepted: ' + ((body && body.error && body.error.message) || 'it is malformed') + '.';
      case 401:
        return 'Your sign-in for this request is missing or has expired. Open the link from your app again.';
      case 403:
        return 'This request is already open on another device. Continue there.';
      case 404:
        return 'This verification request does not exist, or is no longer available.';
      case 408:
        return 'The upload took too long and was stopped. Try again on a better connection.';
      case 409:
        return code === 'invalid_state'
          ? 'This request is no longer open: it was already answered, it expired, or it was cancelled.'
          : 'This request changed meanwhile. Reload the page.';
      case 413:
        return 'This photo is too large. The limit is 5 MB: choose a smaller one.';
      case 415:
        return 'This file is not a JPEG or PNG image. Choose a photo in one of those formats.';
      case 422:
        return 'Something is still missing: fill in every field and add every photo, then approve again.';
      case 429:
        return 'Too many attempts in a short time. Wait a moment and try again.';
      case 503:
        return 'The service is busy right now. Wait a moment and try again.';
      default:
        return 'Something went wrong on our side (' + status + '). Try again in a moment.';
    }
  }

  function showProblem(title, text) {
    els.loading.hidden = true;
    els.form.hidden = true;
    els.problem.hidden = false;
    els.problemTitle.textContent = title;
    els.problemText.textContent = text;
  }

  function readJson(res) {
    return res.json().catch(function () {
      return null;
    });
  }

  function getToken() {
    var fromHash = new URLSearchParams(location.hash.replace(/^#/, '')).get('token');
    if (fromHash) {
      // Keep the token out of the address bar, history and screenshots; keep it for a reload.
      try {
        sessionStorage.setItem(storageKey, fromHash);
      } catch (e) {
        /* storage off: a reload needs the link again */
      }
      history.replaceState(null, '', location.pathname + location.search);
      return Promise.resolve(fromHash);
    }
    var stored = null;
    try {
      stored = sessionStorage.getItem(storageKey);
    } catch (e) {
      stored = null;
    }
    if (stored) return Promise.resolve(stored);
    var fromApp = {
      title: 'Open this page from your app',
      text: 'This page needs a sign-in token from the app that sent you here (a link ending in #token=…).',
    };
    // Outside demo mode there is nobody to ask: the demo's route does not exist.
    if (!document.body.hasAttribute('data-demo')) return Promise.reject(fromApp);
    return fetch(root + '/demo/api/device-token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ session_id: sessionId }),
      cache: 'no-store',
    }).then(function (res) {
      // 404: not one of the demo's sessions (a real app's session needs its app's token).
      if (res.status === 404) throw fromApp;
      if (!res.ok) {
        return readJson(res).then(function (body) {
          throw { title: 'Could not sign you in', text: explain(res.status, body) };
        });
      }
      return res.json().then(function (body) {
        try {
          sessionStorage.setItem(storageKey, body.token);
        } catch (e) {
          /* fine without */
        }
        return body.token;
      });
    });
  }

  function authHeaders(extra) {
    var h = { Authorization: 'Bearer ' + token };
    if (extra) Object.keys(extra).forEach(function (k) { h[k] = extra[k]; });
    return h;
  }

  function load() {
    if (!/^[0-9a-fA-F-]{36}$/.test(sessionId)) {
      showProblem('This link is not valid', 'The address does not name a verification request.');
      return;
    }
    getToken()
      .then(function (t) {
        token = t;
        return fetch(apiBase + '/information', { headers: authHeaders(), cache: 'no-store' });
      })
      .then(function (res) {
        return readJson(res).then(function (body) {
          if (!res.ok) {
            var title = res.status === 409 ? 'This request is closed' : 'Cannot open this request';
            throw { title: title, text: explain(res.status, body) };
          }
          return body;
        });
      })
      .then(render)
      .catch(function (e) {
        if (e && e.title) showProblem(e.title, e.text);
        else showProblem('Cannot open this request', explain(0, null, 'loading'));
      });
  }

  /** "2 minutes ago", from an RFC 3339 time. */
  function ago(since) {
    var seconds = Math.max(0, Math.round((Date.now() - new Date(since).getTime()) / 1000));
    if (!isFinite(seconds) || seconds < 60) return 'just now';
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes === 1 ? '1 minute ago' : minutes + ' minutes ago';
    var hours = Math.round(minutes / 60);
    return hours === 1 ? '1 hour ago' : hours + ' hours ago';
  }

  /** "Started on Chrome on Linux, 2 minutes ago": where the session is shown, a hint. */
  function shownOnText(on) {
    if (!on) return 'The screen where this started has not shown it yet.';
    var known = function (v) {
      return v && v !== 'Unknown';
    };
    var where = known(on.browser)
      ? on.browser + (known(on.os) ? ' on ' + on.os : '')
      : known(on.os)
        ? 'a browser on ' + on.os
        : 'an unknown browser';
    return 'Started on ' + where + ', ' + ago(on.since) + '.';
  }

  function setBindingError(text) {
    els.bindingError.textContent = text;
    els.bindingError.hidden = false;
    els.bindingInput.setAttribute('aria-invalid', 'true');
    els.bindingInput.setAttribute('aria-describedby', 'binding-input-error binding-help');
  }

  function clearBindingError() {
    els.bindingError.hidden = true;
    els.bindingError.textContent = '';
    els.bindingInput.removeAttribute('aria-invalid');
    els.bindingInput.setAttribute('aria-describedby', 'binding-help');
  }

  function render(body) {
    info = body;
    binding = body.binding === 'code';
    if (binding) {
      els.bindingSet.hidden = false;
      els.shownOn.textContent = shownOnText(body.shown_on);
      els.bindingInput.addEventListener('input', clearBindingError);
    }
    els.loading.hidden = true;
    els.requester.textContent = (body.requester && body.requester.name) || 'An app';
    document.title = 'Verify your identity for ' + els.requester.textContent;

    var registration = body.registration && typeof body.registration === 'object' ? body.registration : {};
    var scopes = body.scopes || [];
    scopes.forEach(function (scope) {
      var li = document.createElement('li');
      li.textContent = words(scope);
      li.setAttribute('data-scope', scope);
      els.scopes.appendChild(li);
      if (FILE_SCOPES[scope]) addFileField(scope);
      else addValueField(scope, registration[scope]);
    });
    els.valuesSet.hidden = !els.valueFields.firstChild;
    els.filesSet.hidden = !els.fileFields.firstChild;

    if (body.expires_at) {
      var at = new Date(body.expires_at);
      els.expiryLine.textContent = 'This request is open until ' + at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) + '.';
      var left = at.getTime() - Date.now();
      if (left > 0 && left < 2147483647) {
        expiryTimer = setTimeout(function () {
          if (!finished) showResult('expired');
        }, left + 1000);
      }
    }
    els.form.hidden = false;
    els.title.focus();
  }

  function fieldId(scope) {
    return 'field-' + scope;
  }

  function addValueField(scope, prefill) {
    var wrap = document.createElement('div');
    wrap.className = 'field';
    var id = fieldId(scope);
    var lab = document.createElement('label');
    lab.htmlFor = id;
    lab.textContent = label(scope);
    var input = document.createElement('input');
    input.id = id;
    input.name = scope;
    input.required = true;
    input.setAttribute('aria-required', 'true');
    input.setAttribute('data-testid', 'input-' + scope);
    input.maxLength = 4096;
    var value = typeof prefill === 'string' || typeof prefill === 'number' ? String(prefill) : '';
    if (scope === 'date_of_birth' && (value === '' || /^\d{4}-\d{2}-\d{2}$/.test(value))) {
      input.type = 'date';
    } else if (scope === 'email') {
      input.type = 'email';
    } else if (scope === 'phone_number' || scope === 'phone') {
      input.type = 'tel';
    } else {
      input.type = 'text';
    }
    if (AUTOCOMPLETE[scope]) input.autocomplete = AUTOCOMPLETE[scope];
    input.value = value;
    var err = document.createElement('p');
    err.className = 'field-error';
    err.id = id + '-error';
    err.hidden = true;
    input.addEventListener('input', function () {
      clearFieldError(input, err);
    });
    wrap.appendChild(lab);
    wrap.appendChild(input);
    wrap.appendChild(err);
    els.valueFields.appendChild(wrap);
  }

  function setFieldError(input, err, text) {
    err.textContent = text;
    err.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', err.id);
  }

  function clearFieldError(input, err) {
    err.hidden = true;
    err.textContent = '';
    input.removeAttribute('aria-invalid');
    input.removeAttribute('aria-describedby');
  }

  function addFileField(kind) {
    var wrap = document.createElement('div');
    wrap.className = 'field field-file';
    var id = fieldId(kind);
    var lab = document.createElement('label');
    lab.htmlFor = id;
    lab.textContent = kind === 'selfie' ? 'Selfie: a photo of your face' : label(kind);
    var hint = document.createElement('p');
    hint.className = 'muted small hint';
    hint.id = id + '-hint';
    hint.textContent =
      kind === 'selfie'
        ? 'Your front camera opens; on a computer, choose a photo file.'
        : 'Your camera opens; on a computer, choose a photo file.';
    var input = document.createElement('input');
    input.type = 'file';
    input.id = id;
    input.name = kind;
    input.accept = 'image/jpeg,image/png';
    input.setAttribute('capture', kind === 'selfie' ? 'user' : 'environment');
    input.setAttribute('data-testid', 'file-' + kind);
    input.setAttribute('aria-describedby', id + '-hint ' + id + '-state');

    var preview = document.createElement('img');
    preview.className = 'preview';
    preview.alt = 'Preview of your ' + label(kind).toLowerCase();
    preview.hidden = true;

    var progress = document.createElement('progress');
    progress.max = 100;
    progress.value = 0;
    progress.hidden = true;
    progress.id = id + '-progress';
    progress.setAttribute('aria-label', 'Upload of ' + label(kind).toLowerCase());

    var state = document.createElement('p');
    state.className = 'upload-state';
    state.id = id + '-state';
    state.setAttribute('role', 'status');
    state.setAttribute('data-testid', 'upload-' + kind);
    state.textContent = 'No photo chosen yet.';

    uploads[kind] = { state: 'empty', xhr: null, input: input, stateEl: state };
    input.addEventListener('change', function () {
      var file = input.files && input.files[0];
      if (file) choose(kind, file, preview, progress, state);
    });

    wrap.appendChild(lab);
    wrap.appendChild(hint);
    wrap.appendChild(input);
    wrap.appendChild(preview);
    wrap.appendChild(progress);
    wrap.appendChild(state);
    els.fileFields.appendChild(wrap);
  }

  function choose(kind, file, preview, progress, state) {
    var up = uploads[kind];
    if (up.xhr) up.xhr.abort();
    if (up.previewUrl) URL.revokeObjectURL(up.previewUrl);
    up.previewUrl = null;
    preview.hidden = true;
    progress.hidden = true;
    state.className = 'upload-state';

    var type = file.type === 'image/jpg' ? 'image/jpeg' : file.type;
    if (type !== 'image/jpeg' && type !== 'image/png') {
      up.state = 'error';
      state.className = 'upload-state error';
      state.textContent = 'This file is not a JPEG or PNG image. Choose a photo in one of those formats.';
      return;
    }
    if (file.size > MAX_UPLOAD_BYTES) {
      up.state = 'error';
      state.className = 'upload-state error';
      state.textContent = 'This photo is too large (' + sizeInWords(file.size) + '): the limit is 5 MB. Choose a smaller one.';
      return;
    }
    up.previewUrl = URL.createObjectURL(file);
    preview.src = up.previewUrl;
    preview.hidden = false;

    var xhr = new XMLHttpRequest();
    up.xhr = xhr;
    up.state = 'uploading';
    progress.value = 0;
    progress.hidden = false;
    state.textContent = 'Uploading… 0%';
    xhr.open('PUT', apiBase + '/files/' + encodeURIComponent(kind));
    xhr.setRequestHeader('Authorization', 'Bearer ' + token);
    xhr.setRequestHeader('Content-Type', type);
    xhr.timeout = 60000;
    xhr.upload.onprogress = function (ev) {
      if (!ev.lengthComputable) return;
      var pct = Math.round((ev.loaded / ev.total) * 100);
      progress.value = pct;
      state.textContent = 'Uploading… ' + pct + '%';
    };
    function done(status, body) {
      if (up.xhr !== xhr) return;
      up.xhr = null;
      progress.hidden = true;
      if (status === 201) {
        up.state = 'done';
        state.className = 'upload-state ok';
        state.textContent = 'Uploaded (' + sizeInWords(file.size) + ').';
      } else {
        up.state = 'error';
        state.className = 'upload-state error';
        state.textContent = explain(status, body, 'uploading');
      }
    }
    xhr.onload = function () {
      var body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (e) {
        body = null;
      }
      done(xhr.status, body);
    };
    xhr.onerror = function () {
      done(0, null);
    };
    xhr.ontimeout = function () {
      done(408, null);
    };
    xhr.send(file);
  }

  function showSummary(text) {
    els.summary.hidden = false;
    els.summaryText.textContent = text;
    els.summary.focus();
  }

  function collect() {
    var shared = {};
    var firstBad = null;
    var problems = 0;
    var code = null;
    if (binding) {
      code = els.bindingInput.value.trim();
      if (!/^[1-9][0-9]$/.test(code)) {
        setBindingError('Type the two digits shown on the screen where you started.');
        problems += 1;
        firstBad = els.bindingInput;
      } else {
        clearBindingError();
      }
    }
    Array.prototype.forEach.call(els.valueFields.querySelectorAll('input'), function (input) {
      var err = document.getElementById(input.id + '-error');
      var v = input.value.trim();
      if (!v) {
        setFieldError(input, err, 'Fill in your ' + label(input.name).toLowerCase() + '.');
        problems += 1;
        if (!firstBad) firstBad = input;
      } else {
        clearFieldError(input, err);
        shared[input.name] = v;
      }
    });
    Object.keys(uploads).forEach(function (kind) {
      var up = uploads[kind];
      if (up.state === 'done') return;
      problems += 1;
      if (up.state === 'uploading') {
        up.stateEl.textContent = 'Still uploading: wait for it to finish.';
      } else if (up.state === 'empty') {
        up.stateEl.className = 'upload-state error';
        up.stateEl.textContent = 'Add a photo: ' + words(kind).toLowerCase() + '.';
      }
      if (!firstBad) firstBad = up.input;
    });
    return { shared: shared, code: code, problems: problems, firstBad: firstBad };
  }

  function setBusy(on) {
    busy = on;
    els.approve.disabled = on;
    els.deny.disabled = on;
    els.form.setAttribute('aria-busy', on ? 'true' : 'false');
  }

  function send(decision, shared, code) {
    if (busy || finished) return;
    setBusy(true);
    var body = { decision: decision };
    if (decision === 'approve') body.shared_data = shared;
    if (decision === 'approve' && code) body.binding_code = code;
    fetch(apiBase + '/update', {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body),
      cache: 'no-store',
    })
      .then(function (res) {
        return readJson(res).then(function (json) {
          setBusy(false);
          if (res.status === 422 && json && json.error && json.error.code === 'binding_mismatch') {
            wrongNumber(json.error.tries_left);
            return;
          }
          if (!res.ok) {
            showSummary(explain(res.status, json, 'sending your answer'));
            return;
          }
          showResult(json.status, json.redirect_url);
        });
      })
      .catch(function () {
        setBusy(false);
        showSummary(explain(0, null, 'sending your answer'));
      });
  }

  /** A wrong number: said in words, with the tries left; the last one ended the session. */
  function wrongNumber(triesLeft) {
    if (!(triesLeft > 0)) {
      showResult('declined', null, 'binding');
      return;
    }
    var tries = triesLeft === 1 ? 'one more try' : triesLeft + ' more tries';
    var text =
      'That is not the number shown on the screen where you started. Check it and type it again: you have ' +
      tries + ' before this request is ended for safety.';
    els.bindingInput.value = '';
    setBindingError(text);
    showSummary(text);
    els.bindingInput.focus();
  }

  function showResult(status, redirectUrl, why) {
    finished = true;
    if (expiryTimer) clearTimeout(expiryTimer);
    Object.keys(uploads).forEach(function (kind) {
      if (uploads[kind].xhr) uploads[kind].xhr.abort();
      if (uploads[kind].previewUrl) URL.revokeObjectURL(uploads[kind].previewUrl);
    });
    els.form.hidden = true;
    els.result.hidden = false;
    els.status.textContent = status;
    els.status.className = 'status-pill status-' + status;
    var who = els.requester.textContent || 'the requester';
    var text = {
      confirmed: 'Thank you. Your details were shared with ' + who + '. You can go back to the other screen.',
      declined: 'You declined. Nothing was shared with ' + who + ', and your uploads were discarded.',
      expired: 'This request expired before it was answered. Start again from the other screen.',
      cancelled: 'The requester cancelled this request.',
    };
    els.resultTitle.textContent = status === 'confirmed' ? 'Done' : status === 'declined' ? 'Declined' : 'Closed';
    els.resultText.textContent = text[status] || '';
    if (why === 'binding') {
      els.resultTitle.textContent = 'Ended for safety';
      els.resultText.textContent =
        'The number was typed wrong three times, so this request was ended for safety and nothing was shared with ' +
        who + '. If you did not start it yourself on another screen, someone may have sent you their code: ignore it.';
    }
    els.resultTitle.focus();
    if (redirectUrl && /^https?:\/\//i.test(redirectUrl)) {
      els.redirectLine.hidden = false;
      els.redirectLink.href = redirectUrl;
      location.assign(redirectUrl);
    }
  }

  els.form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    if (!info || finished) return;
    els.summary.hidden = true;
    var c = collect();
    if (c.problems) {
      showSummary(c.problems === 1 ? 'One thing is missing; see below.' : c.problems + ' things are missing; see below.');
      if (c.firstBad) c.firstBad.focus();
      return;
    }
    send('approve', c.shared, c.code);
  });
  // A summary of what was missing is stale once the person changes anything.
  els.form.addEventListener('change', function () {
    els.summary.hidden = true;
  });
  els.deny.addEventListener('click', function () {
    if (!info || finished) return;
    send('deny');
  });

  load();
})();
