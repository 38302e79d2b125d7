'use strict';
/*
 * devsandbox.js — the files `make run` (test/lib/devrun.sh) needs under VAR_DIR, made from the
 * committed configuration plus keys that are generated here once and never committed.
 *
 *   node test/lib/devsandbox.js VAR_DIR PAYGATED_CONFIG
 *
 * Environment (devrun.sh sets every one; no defaults here, so that devrun.sh is the only place
 * that knows the default ports): API_PORT ADMIN_PORT PG_PORT REDIS_PORT SWIFTPASS_SIM_PORT
 * MYBANK_SIM_PORT ALIPAY_SIM_PORT WECHATPAY_SIM_PORT; optional PAYGATED_CHANNELS_DIR.
 *
 * Writes, each time (they depend on the ports, which may change between runs):
 *   VAR_DIR/paygated.json       PAYGATED_CONFIG with the ports above, channels.dir made absolute,
 *                               each channel's URL pointed at its simulator, and the channels'
 *                               public keys (and Alipay's app key) filled in where the committed
 *                               file leaves them out;
 *   VAR_DIR/sim/<name>.json     config/sim/<name>.json plus the keys (mybank, alipay, wechatpay;
 *                               swiftpass's MD5 keys are sandbox values committed in its file);
 *   VAR_DIR/seed/<channel>.jsonl one `POST /admin/sub-merchants` body a line, for every merchant
 *                               of that simulator, with its credentials (seed_sandbox reads them).
 * Once, reused on later runs (a second `make run` must verify what the first one signed):
 *   VAR_DIR/keys/               RSA-2048 key pairs made with node's crypto, as the integration
 *                               tests make theirs (test/integration/alipay.test.js,
 *                               wechatpay.test.js); WeChat's platform certificate made with
 *                               `openssl req`, as wechatpay.test.js makes its own.
 * Everything that holds a secret is mode 0600 in a 0700 directory.
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..', '..');

function die(msg) {
  process.stderr.write(`devsandbox: ${msg}\n`);
  process.exit(1);
}

const [varDir, configFile] = process.argv.slice(2);
if (!varDir || !configFile) die('usage: node test/lib/devsandbox.js VAR_DIR PAYGATED_CONFIG');

function port(name) {
  const v = process.env[name];
  const n = Number(v);
  if (!v || !Number.isInteger(n) || n < 1 || n > 65535) die(`${name} must be a port number, got "${v || ''}"`);
  return n;
}
const ports = {
  api: port('API_PORT'), admin: port('ADMIN_PORT'), pg: port('PG_PORT'), redis: port('REDIS_PORT'),
  swiftpass: port('SWIFTPASS_SIM_PORT'), mybank: port('MYBANK_SIM_PORT'),
  alipay: port('ALIPAY_SIM_PORT'), wechatpay: port('WECHATPAY_SIM_PORT'),
};

const readJson = (f) => {
  try { return JSON.parse(fs.readFileSync(f, 'utf8')); } catch (e) { return die(`${f}: ${e.message}`); }
};
const simConfig = (name) => readJson(path.join(ROOT, 'config', 'sim', `${name}.json`));

// Written to a temporary name and renamed: an interrupted run never leaves half a key or config.
function writeSecret(file, text) {
  const tmp = `${file}.tmp${process.pid}`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}
function privateDir(d) {
  fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  fs.chmodSync(d, 0o700);
  return d;
}

// ------------------------------------------------------------------ keys (made once)
const keyDir = privateDir(path.join(varDir, 'keys'));

/* The PKCS#8 PEM of the RSA key stored as keys/<name>.pem, generated on first use. */
function rsaKey(name) {
  const f = path.join(keyDir, `${name}.pem`);
  if (!fs.existsSync(f)) {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeSecret(f, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  }
  return fs.readFileSync(f, 'utf8');
}
const publicPem = (priv) => crypto.createPublicKey(priv).export({ type: 'spki', format: 'pem' });

/* keys/<name>.json: small generated values (serials, ids, symmetric keys), made once by make(). */
function generated(name, make) {
  const f = path.join(keyDir, `${name}.json`);
  if (!fs.existsSync(f)) writeSecret(f, `${JSON.stringify(make(), null, 2)}\n`);
  return readJson(f);
}

/* WeChat Pay's platform certificate: self-signed by keys/<name>.pem with a 40-hex-digit serial,
 * as WeChat's are (the module reads the serial from the certificate). */
function platformCertificate(name) {
  const key = rsaKey(name);
  const f = path.join(keyDir, `${name}.crt`);
  if (!fs.existsSync(f)) {
    const serial = `7${crypto.randomBytes(20).toString('hex').toUpperCase().slice(0, 39)}`;
    const tmp = `${f}.tmp${process.pid}`;
    try {
      execFileSync('openssl', ['req', '-x509', '-new', '-key', path.join(keyDir, `${name}.pem`), '-sha256',
        '-days', '3650', '-set_serial', `0x${serial}`,
        '-subj', '/C=CN/O=paygate sandbox/OU=make run/CN=WeChat Pay platform (sandbox only)', '-out', tmp],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      die(`openssl req failed (is openssl installed? make deps installs it): ${String(e.stderr || e.message).trim()}`);
    }
    fs.renameSync(tmp, f);
  }
  return { key, certificate: fs.readFileSync(f, 'utf8') };
}

// ------------------------------------------------------------------ simulators and sub-merchants
const simDir = privateDir(path.join(varDir, 'sim'));
const seedDir = privateDir(path.join(varDir, 'seed'));
const seeds = {};    // channel -> [sub-merchant body]

// Swiftpass: MD5 merchants whose sandbox keys are in config/sim/swiftpass.json itself; the
// simulator reads that file directly.
{
  const cfg = simConfig('swiftpass');
  seeds.swiftpass = (Array.isArray(cfg) ? cfg : cfg.merchants || []).map((m) => {
    if (!m.key) die('config/sim/swiftpass.json: the sandbox seeds MD5 merchants only (a key each)');
    return { channel: 'swiftpass', mch_id: m.mch_id, key: m.key };
  });
}

// MyBank: the bank's key signs answers and notifications; one ISV key signs every merchant's
// requests (an ISV acts for all its merchants).
const mybankBank = rsaKey('mybank-bank');
const mybankIsv = rsaKey('mybank-isv');
{
  const cfg = simConfig('mybank');
  cfg.bank_private_key = mybankBank;
  cfg.merchants = (cfg.merchants || []).map((m) => ({ ...m, public_key: publicPem(mybankIsv) }));
  writeSecret(path.join(simDir, 'mybank.json'), JSON.stringify(cfg, null, 2));
  seeds.mybank = cfg.merchants.map((m) => ({ channel: 'mybank', mch_id: m.mch_id, private_key: mybankIsv }));
}

// Alipay: one ISV app (paygated's settings hold its key) acting for each merchant by token.
const alipayApp = rsaKey('alipay-app');
const alipayPlatform = rsaKey('alipay-platform');
let alipayAppId;
{
  const cfg = simConfig('alipay');
  const apps = Array.isArray(cfg) ? cfg : cfg.apps || [];
  if (apps.length !== 1) die('config/sim/alipay.json: the sandbox has exactly one ISV app');
  alipayAppId = apps[0].app_id;
  apps[0] = { ...apps[0], app_public_key: publicPem(alipayApp), alipay_private_key: alipayPlatform };
  writeSecret(path.join(simDir, 'alipay.json'), JSON.stringify(Array.isArray(cfg) ? apps : { ...cfg, apps }, null, 2));
  seeds.alipay = (apps[0].merchants || []).map((m) => ({
    channel: 'alipay', mch_id: m.seller_id, extra: { app_auth_token: m.app_auth_token },
  }));
}

// WeChat Pay: a platform certificate and a WeChat Pay public key (both kinds, as WeChat has them
// during its switch), and per merchant an API key, a certificate serial and an APIv3 key.
const wxCert = platformCertificate('wechatpay-platform-cert');
const wxPubKey = rsaKey('wechatpay-platform-pubkey');
const wxPubId = generated('wechatpay-platform-pubkey', () => ({
  id: `PUB_KEY_ID_01${Array.from({ length: 42 }, () => crypto.randomInt(10)).join('')}`,
})).id;
{
  const cfg = simConfig('wechatpay');
  cfg.platform = {
    certificate: { private_key: wxCert.key, certificate: wxCert.certificate },
    public_key: { id: wxPubId, private_key: wxPubKey },
  };
  seeds.wechatpay = [];
  cfg.merchants = (cfg.merchants || []).map((m) => {
    const priv = rsaKey(`wechatpay-${m.mch_id}`);
    const g = generated(`wechatpay-${m.mch_id}`, () => ({
      serial_no: crypto.randomBytes(20).toString('hex').toUpperCase(),
      // 32 bytes of [A-Za-z0-9], as WeChat's merchant platform asks for
      apiv3_key: Array.from({ length: 32 }, () =>
        'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'[crypto.randomInt(62)]).join(''),
    }));
    seeds.wechatpay.push({ channel: 'wechatpay', mch_id: m.mch_id, app_id: m.appid, key: g.apiv3_key,
      private_key: priv, extra: { serial_no: g.serial_no } });
    return { ...m, apiv3_key: g.apiv3_key, merchant_public_key: publicPem(priv), merchant_serial: g.serial_no };
  });
  writeSecret(path.join(simDir, 'wechatpay.json'), JSON.stringify(cfg, null, 2));
}

for (const [channel, list] of Object.entries(seeds)) {
  writeSecret(path.join(seedDir, `${channel}.jsonl`), list.map((b) => `${JSON.stringify(b)}\n`).join(''));
}

// ------------------------------------------------------------------ paygated's configuration
const cfg = readJson(configFile);
const withPort = (url, p, what) => {
  let u;
  try { u = new URL(url); } catch (_) { return die(`${configFile}: ${what} is not a URL`); }
  u.port = String(p);
  return u.toString().replace(/\/$/, url.endsWith('/') ? '/' : '');
};
cfg.listen = { ...cfg.listen, port: ports.api };
cfg.admin = { ...cfg.admin, port: ports.admin };
cfg.redis = { ...cfg.redis, port: ports.redis };
cfg.postgres = { ...cfg.postgres };
cfg.postgres.conninfo = /\bport=\d+/.test(cfg.postgres.conninfo || '')
  ? cfg.postgres.conninfo.replace(/\bport=\d+/, `port=${ports.pg}`)
  : `${cfg.postgres.conninfo || ''} port=${ports.pg}`.trim();
const ch = cfg.channels = { ...cfg.channels };
// relative to the repository (make run's working directory), not to VAR_DIR where this file goes
ch.dir = path.resolve(ROOT, process.env.PAYGATED_CHANNELS_DIR || ch.dir || 'build/rel/channels');
ch.notify_base_url = withPort(ch.notify_base_url || 'http://127.0.0.1', ports.api, 'channels.notify_base_url');
const st = ch.settings = { ...ch.settings };
const setting = (name) => (st[name] = { ...st[name] });
const urlKey = { swiftpass: 'gateway_url', mybank: 'gateway_url', alipay: 'gateway_url', wechatpay: 'base_url' };
for (const [name, key] of Object.entries(urlKey)) {
  const s = setting(name);
  if (!s[key]) die(`${configFile}: channels.settings.${name}.${key} is missing (the sandbox needs it)`);
  s[key] = withPort(s[key], ports[name], `channels.settings.${name}.${key}`);
}
// keys the committed file cannot hold; a key given there is kept
st.mybank.bank_public_key ||= publicPem(mybankBank);
if (st.alipay.app_id && st.alipay.app_id !== alipayAppId) {
  die(`${configFile}: channels.settings.alipay.app_id ${st.alipay.app_id} is not the simulator's app ${alipayAppId}`);
}
st.alipay.app_id ||= alipayAppId;
st.alipay.private_key ||= alipayApp;
st.alipay.alipay_public_key ||= publicPem(alipayPlatform);
st.wechatpay.platform_keys ||= [{ key: wxCert.certificate }, { serial: wxPubId, key: publicPem(wxPubKey) }];
writeSecret(path.join(varDir, 'paygated.json'), `${JSON.stringify(cfg, null, 2)}\n`);
