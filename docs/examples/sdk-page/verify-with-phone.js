// /js/verify-with-phone.js (a file: pages served with a strict CSP allow no inline script)
const flow = IdvBroker.start({
  qrElement: document.getElementById('qr'),

  // Your backend creates the session with its API key and returns the create response
  // (at least session_id, session_token and url).
  onSessionIdResolver: async () => {
    const res = await fetch('/api/idv/sessions', { method: 'POST' });
    if (!res.ok) throw new Error('could not start a verification');
    return res.json();
  },

  // Called once, when the person approved. Your backend reads the decision
  // (GET /v1/sessions/{id}/decision with its API key) and returns what the page needs.
  handleVerify: async (session) => {
    const res = await fetch(`/api/idv/sessions/${session.session_id}/result`, { method: 'POST' });
    if (!res.ok) throw new Error('could not read the result');
    return res.json();
  },

  onStatus: (status) => {
    document.getElementById('status').textContent = status;
  },
  onSuccess: (result) => {
    window.location.assign(result.next);
  },
  onError: (error) => {
    // A recoverable error (qr_failed) does not end the flow: the next onStatus follows.
    if (error.recoverable) return;
    // blocked: this page's origin may not reach the broker (see error.broker, error.origin)
    document.getElementById('status').textContent = `${error.code}: ${error.message}`;
  },
});

// Leaving the page or closing the dialog:
// flow.stop();
