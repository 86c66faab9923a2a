// What a verification report looks like to a person: one state, one title, a row per thing
// checked. Shared by the widget (a badge in an app's page) and the verification page.
// Every string from the bundle reaches the DOM through textContent only.

const ROWS = [
  ['quote', 'TDX quote'],
  ['policy', 'Measurement'],
  ['binding', 'Claims bound'],
  ['keys', 'Keys'],
  ['ct', 'Certificate Transparency'],
  ['caa', 'CAA'],
];

/**
 * `attested` (every step a page can check passed: the domain's keys are attested), `verified`
 * (the TEE and its keys check out; CT or CAA were not checked or are stale, so they do not
 * close the domain), or `failed` (a step failed: a CT alert or CAA that lets other CAs issue
 * is a failure too, not a gap).
 */
export function stateOf(report) {
  if (report.domainAttested) return 'attested';
  if (report.verified && !report.steps.some((s) => s.status === 'fail')) return 'verified';
  return 'failed';
}

/** {state, title, rows: [{step, label, status, detail}], simulated}. */
export function summarize(report, domain, simulated) {
  const state = stateOf(report);
  const rows = ROWS.map(([step, label]) => {
    const s = report.steps.find((x) => x.step === step);
    return { step, label, status: s ? s.status : 'not checked', detail: s ? s.detail : 'not reached' };
  });
  if (report.measurements) {
    const m = report.measurements;
    rows.find((r) => r.step === 'quote').detail += ` · MRTD ${m.mrtd.slice(0, 16)}…`;
  }
  let title;
  if (state === 'attested') title = `The keys of ${domain} are attested`;
  else if (state === 'verified') {
    const open = rows.filter((r) => (r.step === 'ct' || r.step === 'caa') && r.status !== 'ok').map((r) => r.label);
    title = `TEE and keys verified; not closed by ${open.join(' and ')}`;
  } else {
    const failed = report.steps.find((x) => x.status === 'fail');
    title = failed ? `Attestation failed at ${failed.step}: ${failed.detail}` : 'Attestation failed';
  }
  if (simulated) title += ' (SIMULATED TEE: proves nothing)';
  return { state, title, rows, simulated };
}

export const BADGE_CSS = `
:host { all: initial; display: inline-block; font: 13px/1.4 system-ui, sans-serif; color: #1d232b; }
.badge { border: 1px solid #c9d1d9; border-radius: 8px; background: #fff; min-width: 300px; max-width: 560px; }
.head { display: flex; gap: 8px; align-items: center; padding: 8px 12px; cursor: pointer; border-radius: 8px 8px 0 0; }
.dot { width: 12px; height: 12px; border-radius: 50%; flex: none; }
.attested .dot { background: #1a7f37; } .attested .head { background: #dafbe1; }
.verified .dot { background: #bf8700; } .verified .head { background: #fff8c5; }
.failed .dot { background: #cf222e; } .failed .head { background: #ffebe9; }
.pending .dot { background: #8c959f; }
.title { font-weight: 600; }
.sim { color: #9a6700; font-weight: 600; }
table { border-collapse: collapse; width: 100%; }
td { padding: 3px 12px; vertical-align: top; border-top: 1px solid #eaeef2; }
td.label { white-space: nowrap; color: #57606a; }
td.ok::before { content: '✓ '; color: #1a7f37; }
td.fail::before { content: '✗ '; color: #cf222e; }
td.skip::before { content: '– '; color: #9a6700; }
.foot { padding: 6px 12px; color: #57606a; font-size: 12px; border-top: 1px solid #eaeef2; }
`;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Renders `summary` (or a pending badge when null) into `root` (a shadow root or element). */
export function renderBadge(root, summary, { open = false, note } = {}) {
  for (const c of [...root.childNodes]) if (c.nodeName !== 'STYLE') c.remove();
  const state = summary ? summary.state : 'pending';
  const badge = el('div', `badge ${state}`);
  badge.dataset.state = state;
  const head = el('div', 'head');
  head.append(el('span', 'dot'), el('span', 'title', summary ? summary.title : 'Checking attestation…'));
  badge.append(head);
  if (summary) {
    const table = el('table');
    table.hidden = !open;
    for (const r of summary.rows) {
      const tr = el('tr');
      tr.dataset.step = r.step;
      tr.dataset.status = r.status;
      tr.append(el('td', 'label', r.label), el('td', r.status, r.detail));
      table.append(tr);
    }
    badge.append(table);
    head.addEventListener('click', () => (table.hidden = !table.hidden));
    badge.append(
      el('div', 'foot', note || 'What this says: the keys that can serve this name live in a measured TEE. It cannot see this connection\'s own certificate.'),
    );
  }
  root.append(badge);
  return badge;
}

/** Adds BADGE_CSS to a shadow root (constructed sheets where the browser has them). */
export function styleShadow(shadow) {
  if ('adoptedStyleSheets' in shadow && typeof CSSStyleSheet === 'function') {
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(BADGE_CSS);
      shadow.adoptedStyleSheets = [sheet];
      return;
    } catch {
      // fall through to a <style> element
    }
  }
  shadow.append(el('style', undefined, BADGE_CSS));
}
