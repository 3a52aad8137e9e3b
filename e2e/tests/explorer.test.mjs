// The explorer in a real browser against a real node: it loads, shows a conflict made
// over HTTP in the heatmap and its conflict list (with both traces linked), reads a
// pointer as of an older moment with the time control, shows who holds a lock and who
// waits, tails events, survives a node restart, and works with an auth token.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Node, browser, shot, bigs, sleep } from "./harness.mjs";

let node, b, page, errors;

before(async () => {
  // A long lock timeout keeps a waiter waiting while the locks view is inspected.
  node = await Node.start(["--lock-timeout", "20s"]);
  ({ browser: b, page, errors } = await browser());
});

after(async () => {
  await b?.close();
  await node?.close();
});

async function open(view) {
  await page.goto(`${node.base}/ui/#/${view}`);
  await page.getByTestId("health").filter({ hasText: "node ok" }).waitFor();
}

test("the explorer loads at /ui/ and names the node", async () => {
  await open("heatmap");
  assert.equal(await page.title(), "reSTM explorer");
  assert.match(await page.getByTestId("health").textContent(), /node ok · v\d/);
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor();
  await page.getByTestId("heat-empty").waitFor();
  assert.deepEqual(errors, []);
});

test("a conflict made over HTTP appears in the heatmap and its conflict list, with trace links", async () => {
  await open("heatmap");
  // Point the trace links at a Jaeger of our choosing.
  await page.getByTestId("settings").click();
  await page.getByTestId("jaeger").fill("http://jaeger.example:16686");
  await page.getByTestId("settings-save").click();

  await node.req("PUT", "/ptr/acct%2Falice", { body: 100, expect: 200 });
  const loser = await node.begin();
  await node.req("GET", "/ptr/acct%2Falice", { headers: { "x-restm-txn": loser }, expect: 200 });
  const winner = await node.begin();
  await node.req("PUT", "/ptr/acct%2Falice", { headers: { "x-restm-txn": winner }, body: 90, expect: 200 });
  const won = await node.req("POST", `/txn/${winner}/commit`, { expect: 200 });
  await node.req("PUT", "/ptr/acct%2Falice", { headers: { "x-restm-txn": loser }, body: 50, expect: 200 });
  const lost = await node.req("POST", `/txn/${loser}/commit`, { expect: 409 });
  assert.equal(lost.json.winner_txn, winner);

  const cell = page.locator('rect[data-testid="heat-cell"][data-group="acct/"]:not([data-conflicts="0"])');
  await cell.first().waitFor({ timeout: 10_000 });
  assert.equal(await cell.count(), 1);
  assert.equal(await cell.getAttribute("data-conflicts"), "1");
  await cell.click();
  const row = page.getByTestId("conflict-row").filter({ hasText: "conflict" });
  await row.waitFor();
  assert.equal(await row.getByTestId("conflict-ptr").textContent(), "acct/alice");
  assert.equal(await row.getByTestId("conflict-loser").textContent(), loser);
  assert.equal(await row.getByTestId("conflict-winner").textContent(), winner);
  assert.match(await row.textContent(), new RegExp(`committed v${bigs(won.text, "commit_version")[0]}\\)`));
  const links = await row.getByTestId("trace-link").evaluateAll((as) => as.map((a) => a.href));
  assert.equal(links.length, 2, "both the loser's and the winner's trace are linked");
  const loserTrace = (await node.req("GET", `/txn/${loser}`, { expect: 200 })).json.trace_id;
  const winnerTrace = (await node.req("GET", `/txn/${winner}`, { expect: 200 })).json.trace_id;
  assert.deepEqual(links, [
    `http://jaeger.example:16686/trace/${loserTrace}`,
    `http://jaeger.example:16686/trace/${winnerTrace}`,
  ]);
  assert.match(await page.getByTestId("heat-totals").textContent(), /^1 conflicts/);
  await shot(page, "heatmap");
});

test("three versions of a pointer: moving the time control back shows the old value", async () => {
  const times = [];
  for (const v of [{ step: 1 }, { step: 2 }, { step: 3 }]) {
    const r = await node.req("PUT", "/ptr/cfg%2Fflags", { body: v, expect: 200 });
    times.push(Number(BigInt(bigs(r.text, "version")[0]) >> 16n));
    await sleep(120);
  }
  await open("travel");
  await page.getByTestId("find-prefix").fill("cfg/");
  await page.getByTestId("find").click();
  await page.getByTestId("ptr-item").filter({ hasText: "cfg/flags" }).click();
  await page.getByTestId("as-of-json").filter({ hasText: '"step": 3' }).waitFor();
  assert.equal(await page.getByTestId("version-row").count(), 3);
  assert.equal(await page.getByTestId("timeline-dot").count(), 3);

  // Move the slider to a moment between the first and the second write.
  const slider = page.getByTestId("time-slider");
  await slider.evaluate((el, ms) => {
    el.value = String(ms);
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, times[0] + 50);
  await page.getByTestId("as-of-json").filter({ hasText: '"step": 1' }).waitFor();
  // Before the first write the pointer did not exist.
  await slider.evaluate((el, ms) => {
    el.value = String(ms);
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, times[0] - 500);
  await page.getByTestId("as-of-absent").waitFor();
  // Any X-reSTM-At expression works too: the second version by number.
  const second = bigs((await node.req("GET", "/ptr/cfg%2Fflags/history", { expect: 200 })).text, "version")[1];
  await page.getByTestId("at-input").fill(String(second));
  await page.getByTestId("at-read").click();
  await page.getByTestId("as-of-json").filter({ hasText: '"step": 2' }).waitFor();
  // The diff defaults to the last two versions.
  await page.getByTestId("diff-row").filter({ hasText: "$.step" }).filter({ hasText: "2 → 3" }).waitFor();
  // A bad expression says why.
  await page.getByTestId("at-input").fill("yesterday-ish");
  await page.getByTestId("at-read").click();
  assert.match(await page.getByTestId("as-of-error").textContent(), /^400 .*bad-request/);
  await page.getByTestId("at-input").fill(String(second));
  await page.getByTestId("at-read").click();
  await page.getByTestId("as-of-json").filter({ hasText: '"step": 2' }).waitFor();

  // The whole prefix as of that moment.
  await page.getByTestId("state-prefix").fill("cfg/");
  await page.getByTestId("state-at").fill(String(second));
  await page.getByTestId("state-browse").click();
  await page.getByTestId("state-row").filter({ hasText: '{"step":2}' }).waitFor();
  await shot(page, "time-travel");
});

test("the locks view shows a txn holding a lock, its waiter, and the oldest txn", async () => {
  const holder = await node.begin();
  await node.req("PUT", "/ptr/jobs%2F1", { headers: { "x-restm-txn": holder }, body: "mine", expect: 200 });
  const waiter = await node.begin();
  // Blocks on the lock until the holder finishes.
  const waiting = node.req("PUT", "/ptr/jobs%2F1", { headers: { "x-restm-txn": waiter }, body: "theirs" });
  await open("locks");
  const row = page.locator(`tr[data-txn="${holder}"]`);
  await row.waitFor();
  assert.equal(await row.getByTestId("txn-locks").textContent(), "jobs/1");
  await row.getByTestId("txn-waiters").filter({ hasText: waiter.slice(0, 12) }).waitFor();
  await row.getByTestId("oldest-badge").waitFor();
  await page.getByTestId("lock-row").filter({ hasText: "jobs/1" }).getByTestId("lock-waiters")
    .filter({ hasText: waiter }).waitFor();
  await shot(page, "locks");
  await node.req("POST", `/txn/${holder}/commit`, { expect: 200 });
  assert.equal((await waiting).status, 200);
  await node.req("POST", `/txn/${waiter}/commit`, { expect: 200 });
  await page.getByTestId("txn-row").first().waitFor({ state: "detached" });
});

test("the event tail filters by kind and prefix", async () => {
  await open("events");
  await page.getByTestId("kind-commit").uncheck();
  await page.getByTestId("kind-begin").uncheck();
  await page.getByTestId("tail-prefix").fill("tail/");
  await page.getByTestId("tail-apply").click();
  await page.getByTestId("tail-link").filter({ hasText: "live" }).waitFor();
  await sleep(100);
  await node.req("PUT", "/ptr/other", { body: 1, expect: 200 });
  await node.req("PUT", "/ptr/tail%2Fa", { body: 1, expect: 200 });
  await page.getByTestId("tail-row").filter({ hasText: "tail/a" }).first().waitFor();
  const text = await page.getByTestId("tail-table").textContent();
  assert.ok(!text.includes("other"), "the prefix filter holds");
  const kinds = await page.locator('[data-testid="tail-row"] td:nth-child(3)').allTextContents();
  assert.ok(kinds.length > 0 && kinds.every((k) => !["commit", "begin"].includes(k)), kinds.join(","));
  await shot(page, "events");
});

test("the cluster view says a node of its own is a cluster of one", async () => {
  await open("cluster");
  await page.getByTestId("cluster-single").waitFor();
  // (Earlier views' answers, such as a 404 for an absent pointer, log load failures.)
  assert.deepEqual(errors.filter((e) => !/Failed to load resource/.test(e)), []);
});

test("the heatmap reconnects after the node restarts and keeps receiving", async () => {
  await open("heatmap");
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor();
  await node.restart();
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor({ timeout: 15_000 });
  // A lock wait after the restart shows up.
  const holder = await node.begin();
  await node.req("PUT", "/ptr/after%2Frestart", { headers: { "x-restm-txn": holder }, body: 1, expect: 200 });
  const waiter = await node.begin();
  const waiting = node.req("PUT", "/ptr/after%2Frestart", { headers: { "x-restm-txn": waiter }, body: 2 });
  await page.locator('rect[data-testid="heat-cell"][data-group="after/"]').first().waitFor({ timeout: 10_000 });
  await node.req("POST", `/txn/${holder}/commit`, { expect: 200 });
  assert.equal((await waiting).status, 200);
});
