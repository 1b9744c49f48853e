// node browse.js <url> <nss-home> <screenshot.png> <expectation>...
//
// Opens <url> in Debian's headless Chromium with its own TLS stack: the server is
// verified against the CA the NSS database in <nss-home>/.pki/nssdb trusts, and the
// client certificate in that database (if any) is presented without the certificate
// picker (an auto_select_certificate setting for the URL's origin in a fresh profile).
// Saves a screenshot, then checks every expectation; exits 0 when all hold.
//
// Expectations:
//   status:<code>           the page's HTTP status
//   text:<needle>           the page's text contains <needle>
//   count:<css>=<n>         exactly <n> elements match <css>
//   has:<css>=<needle>      some element matching <css> has text containing <needle>
//   tls-refused             no page: the server ended the handshake with a
//                           certificate_required alert (seen in Chromium's net-log)
const { chromium } = require('playwright-core');
const fs = require('fs'), os = require('os'), path = require('path');

const [url, nssHome, shot, ...expectations] = process.argv.slice(2);
const CERT_REQUIRED_ALERT = 'AnQ='; // [2 = fatal, 116 = certificate_required], base64
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function browse(profile) {
  const netlog = path.join(profile, 'netlog.json');
  fs.mkdirSync(path.join(profile, 'Default'));
  const rule = { [`${new URL(url).origin},*`]: { setting: { filters: [{}] } } };
  fs.writeFileSync(path.join(profile, 'Default', 'Preferences'), JSON.stringify(
    { profile: { content_settings: { exceptions: { auto_select_certificate: rule } } } }));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    env: { ...process.env, HOME: nssHome },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--log-net-log=${netlog}`],
  });
  const result = { checks: [] };
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    try {
      const resp = await page.goto(url, { timeout: 20000 });
      result.status = resp.status();
      result.text = await page.locator('body').innerText();
      for (const e of expectations) {
        const m = e.match(/^(count|has):(.+)=(.*)$/);
        if (!m) continue;
        const [, kind, css, want] = m;
        const texts = await page.locator(css).allInnerTexts();
        result.checks.push({ e, ok: kind === 'count' ? texts.length === Number(want) : texts.some((t) => t.includes(want)),
          got: `${texts.length} match(es)${texts.length ? `: ${JSON.stringify(texts.slice(0, 3))}` : ''}` });
      }
    } catch (e) {
      result.error = (e.message.match(/net::ERR_[A-Z_]+/) || [e.message.split('\n')[0]])[0];
    }
    // An error page may not be paintable at once.
    for (let i = 0; ; i++) {
      try { await page.screenshot({ path: shot, fullPage: true }); break; } catch (e) { if (i === 9) throw e; }
      await sleep(200);
    }
  } finally {
    await ctx.close(); // Chromium exits and finishes its net-log
  }
  const log = JSON.parse(fs.readFileSync(netlog, 'utf8'));
  const alert = log.constants.logEventTypes.SSL_ALERT_RECEIVED;
  result.certRequired = log.events.some((ev) => ev.type === alert && ev.params && ev.params.bytes === CERT_REQUIRED_ALERT);
  return result;
}

function judge(r, e) {
  if (e.startsWith('status:')) return { ok: r.status === Number(e.slice(7)), got: `HTTP ${r.status ?? r.error}` };
  if (e.startsWith('text:')) return { ok: (r.text || '').includes(e.slice(5)), got: (r.text || r.error || '').replace(/\s+/g, ' ').slice(0, 200) };
  if (e === 'tls-refused') return { ok: !!r.error && r.certRequired, got: `${r.error || `HTTP ${r.status}`}${r.certRequired ? ' (certificate_required alert)' : ''}` };
  const c = r.checks.find((x) => x.e === e);
  if (c) return c;
  return { ok: false, got: r.error ? `no page: ${r.error}` : `unknown expectation ${e}` };
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'crank-chromium-'));
  let r;
  try { r = await browse(profile); } finally { fs.rmSync(profile, { recursive: true, force: true }); }
  let failed = 0;
  for (const e of expectations) {
    const { ok, got } = judge(r, e);
    if (!ok) failed++;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${url} [${e}]${ok ? '' : ` -> ${got}`}`);
  }
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(`FAIL ${url}:`, e); process.exit(2); });
