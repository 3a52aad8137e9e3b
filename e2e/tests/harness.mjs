// Test harness for the explorer's browser tests: a real node (the restm binary that
// `cargo xtask test` built, serving the release explorer) on a free loopback port, a
// headless Debian Chromium driven by playwright-core, and a small HTTP client.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = join(here, "..", "artifacts");
mkdirSync(ARTIFACTS, { recursive: true });

const BIN = process.env.RESTM_BIN ?? join(here, "../../target/debug/restm");
const UI_DIR = process.env.RESTM_UI_DIR ?? join(here, "../../target/ui");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A node process; `restart()` keeps the port and the data dir. */
export class Node {
  static async start(extra = []) {
    const n = new Node();
    n.port = await freePort();
    n.dir = mkdtempSync(join(tmpdir(), "restm-e2e-"));
    n.extra = extra;
    n.base = `http://127.0.0.1:${n.port}`;
    await n.spawn();
    return n;
  }

  async spawn() {
    const args = ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dir, "--ui-dir", UI_DIR, ...this.extra];
    this.spawnArgs = args;
    this.proc = spawn(BIN, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
    for (let i = 0; i < 200; i++) {
      try {
        const r = await fetch(`${this.base}/health`);
        if (r.ok) return;
      } catch {}
      await sleep(50);
    }
    throw new Error(`node on ${this.base} did not come up`);
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const done = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGTERM");
    await Promise.race([done, sleep(5000)]);
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** `fetch` against the node; JSON bodies in and out. */
  async req(method, path, { body, headers = {}, expect } = {}) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["content-type"] = "application/json";
    }
    const r = await fetch(`${this.base}${path}`, init);
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch {}
    if (expect !== undefined && r.status !== expect) {
      throw new Error(`${method} ${path}: expected ${expect}, got ${r.status}: ${text}`);
    }
    return { status: r.status, json, text, headers: r.headers };
  }

  begin() {
    return this.req("POST", "/txn/begin", { body: {}, expect: 201 }).then((r) => r.json.txn);
  }
}

/** A cluster of `n` members on loopback, each serving the explorer. */
export class Cluster {
  static async start(n = 3, extra = []) {
    const ports = [];
    for (let i = 0; i < n; i++) ports.push({ client: await freePort(), peer: await freePort() });
    const initial = ports.map((p, i) => `${i + 1}=http://127.0.0.1:${p.peer}`).join(",");
    const c = new Cluster();
    c.members = await Promise.all(ports.map(async (p, i) => {
      const m = new Node();
      m.id = i + 1;
      m.port = p.client;
      m.dir = mkdtempSync(join(tmpdir(), `restm-e2e-m${i + 1}-`));
      m.extra = ["--node-id", String(i + 1), "--peer-listen", `127.0.0.1:${p.peer}`, "--initial-cluster", initial, ...extra];
      m.base = `http://127.0.0.1:${m.port}`;
      await m.spawn();
      return m;
    }));
    // Every member knows the same leader before a test starts.
    for (let i = 0; i < 400; i++) {
      const seen = await Promise.all(c.members.map((m) => fetch(`${m.base}/cluster`).then((r) => r.json()).then((j) => j.groups?.[0]?.leader).catch(() => null)));
      if (seen[0] && seen.every((l) => l === seen[0])) return c;
      await sleep(50);
    }
    throw new Error("the members did not agree on a leader");
  }

  /** The member that leads, as the first member that answers says (waits for one). */
  async leader(except = null) {
    for (let i = 0; i < 400; i++) {
      for (const m of this.members) {
        if (m.proc.exitCode !== null || m.proc.signalCode !== null) continue;
        try {
          const r = await fetch(`${m.base}/cluster`);
          const id = (await r.json()).groups?.[0]?.leader;
          if (id && id !== except) return this.members[id - 1];
        } catch {}
      }
      await sleep(50);
    }
    throw new Error("the cluster elected no leader");
  }

  kill(member) {
    member.proc.kill("SIGKILL");
  }

  async close() {
    await Promise.all(this.members.map((m) => m.close()));
  }
}

export const enc = encodeURIComponent;

/** Every value of a numeric JSON field, as exact decimal text: versions are u64 and
 * lose precision as JS numbers. */
export function bigs(text, field) {
  return [...text.matchAll(new RegExp(`"${field}":\\s*(\\d+)`, "g"))].map((m) => m[1]);
}

/** A headless Chromium page at 1280x800. */
export async function browser() {
  const b = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
      "--disable-component-update", "--no-first-run", "--disable-sync",
    ],
  });
  const context = await b.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  return { browser: b, page, errors };
}

export async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });
}

export { sleep };
