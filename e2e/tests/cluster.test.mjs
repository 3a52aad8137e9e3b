// The explorer on a 3-member cluster, as the "done" asks: open on a member that
// does not lead, it shows the cluster's conflicts (that member relays the leader's event
// stream). Kill the leader while transfers run through every member: nothing acknowledged
// is lost, money is conserved, /cluster shows the lead move, and the open explorer
// reconnects and goes on showing conflicts; its cluster view shows the old leader not up, the
// new one leading, the move on its timeline, and, rewound to before the kill, the old one.
// Then "lead here" on the other live member's cell hands it the lead.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Cluster, browser, shot, sleep } from "./harness.mjs";

let cluster, b, page, errors;

before(async () => {
  cluster = await Cluster.start(3);
  ({ browser: b, page, errors } = await browser());
});

after(async () => {
  await b?.close();
  await cluster?.close();
});

/** A conflict under `prefix`, made through `m`: the loser's read is stale at its commit. */
async function conflict(m, prefix) {
  const ptr = encodeURIComponent(`${prefix}x`);
  const loser = await m.begin();
  await m.req("GET", `/ptr/${ptr}`, { headers: { "x-restm-txn": loser } });
  await m.req("PUT", `/ptr/${ptr}`, { body: 1, expect: 200 });
  await m.req("PUT", `/ptr/${ptr}`, { headers: { "x-restm-txn": loser }, body: 2, expect: 200 });
  const lost = await m.req("POST", `/txn/${loser}/commit`);
  assert.equal(lost.status, 409, lost.text);
}

/** Moves 1 between two of `accounts` accounts through member `m`, in one transaction. */
async function transfer(m, accounts) {
  const a = Math.floor(Math.random() * accounts);
  const b = (a + 1 + Math.floor(Math.random() * (accounts - 1))) % accounts;
  const [first, second] = a < b ? [a, b] : [b, a];
  let txn = null;
  try {
    txn = await m.begin();
    const read = async (i) => (await m.req("GET", `/ptr/bank%2F${i}`, { headers: { "x-restm-txn": txn, "x-restm-lock": "update" }, expect: 200 })).json;
    const vf = await read(first);
    const vs = await read(second);
    const [va, vb] = a < b ? [vf, vs] : [vs, vf];
    for (const [i, v] of [[a, va - 1], [b, vb + 1]].sort((x, y) => x[0] - y[0])) {
      await m.req("PUT", `/ptr/bank%2F${i}`, { headers: { "x-restm-txn": txn }, body: v, expect: 200 });
    }
    const r = await m.req("POST", `/txn/${txn}/commit`);
    return r.status === 200 ? "acknowledged" : r.status === 503 && r.json?.code === "outcome-unknown" ? "unknown" : "refused";
  } catch {
    // A member that died, or a problem before the commit: it did not happen.
    if (txn) await m.req("POST", `/txn/${txn}/abort`).catch(() => {});
    return "refused";
  }
}

test("the explorer on a follower shows the cluster's conflicts, and keeps showing them after the leader is killed", async () => {
  const leader = await cluster.leader();
  const follower = cluster.members.find((m) => m !== leader);
  const third = cluster.members.find((m) => m !== leader && m !== follower);
  const accounts = 8;
  const opening = { writes: [...Array(accounts).keys()].map((i) => ({ ptr: `bank/${i}`, value: 100 })) };
  for (let i = 0; (await follower.req("POST", "/txn", { body: opening })).status !== 200; i++) {
    assert.ok(i < 100, "the accounts could not be opened");
    await sleep(100);
  }

  await page.goto(`${follower.base}/ui/#/heatmap`);
  await page.getByTestId("health").filter({ hasText: "node ok" }).waitFor();
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor();
  await sleep(300);
  await conflict(follower, "before/");
  await page.locator('rect[data-testid="heat-cell"][data-group="before/"]:not([data-conflicts="0"])').first().waitFor({ timeout: 10_000 });

  // Transfers through every member, while the leader dies.
  let running = true;
  const outcomes = { acknowledged: 0, unknown: 0, refused: 0 };
  const workers = [follower, third, leader].map(async (m) => {
    while (running) outcomes[await transfer(m, accounts)]++;
  });
  await sleep(1_000);
  const beforeKill = (await follower.req("PUT", "/ptr/led", { body: 1, expect: 200 })).headers.get("x-restm-version");
  cluster.kill(leader);
  const next = await cluster.leader(leader.id);
  assert.notEqual(next.id, leader.id);
  // The follower hears of the new leader within a heartbeat or two of the others.
  let seen;
  for (let i = 0; i < 100; i++) {
    seen = (await follower.req("GET", "/cluster", { expect: 200 })).json;
    if (seen.groups[0].leader === next.id) break;
    await sleep(100);
  }
  assert.equal(seen.groups[0].leader, next.id, "/cluster shows the lead moved");
  await sleep(2_000);
  running = false;
  await Promise.all(workers);
  assert.ok(outcomes.acknowledged > 0, JSON.stringify(outcomes));

  // Money is conserved: every acknowledged transfer is whole, none half-done.
  const balances = [];
  for (let i = 0; i < accounts; i++) balances.push((await follower.req("GET", `/ptr/bank%2F${i}`, { expect: 200 })).json);
  assert.equal(balances.reduce((x, y) => x + y, 0), accounts * 100, JSON.stringify({ balances, outcomes }));

  // The open explorer reconnected (through the same member, now to the new leader).
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor({ timeout: 20_000 });
  await sleep(500);
  await conflict(follower, "after/");
  await page.locator('rect[data-testid="heat-cell"][data-group="after/"]:not([data-conflicts="0"])').first().waitFor({ timeout: 15_000 });
  await shot(page, "cluster-heatmap");

  // Rows by partition, then by member: here one coordinator (the one group's leader).
  await page.getByTestId("heat-depth").selectOption("partition");
  await page.locator('rect[data-testid="heat-cell"][data-group^="partition "]:not([data-conflicts="0"])').first().waitFor({ timeout: 5_000 });
  await page.getByTestId("heat-depth").selectOption("node");
  await page.locator('rect[data-testid="heat-cell"][data-group="the coordinator"]:not([data-conflicts="0"])').first().waitFor({ timeout: 5_000 });

  // The cluster view: the killed leader down, the new one leading group 0, and the move on
  // the timeline (watched since the page opened, while the heatmap was shown).
  await page.getByTestId("tab-cluster").click();
  // Down to a member that leads (it calls every member), unknown to one that does not
  // (it hears only the leader): never up.
  await page.locator(`[data-testid="cluster-member"][data-node="${leader.id}"]:not([data-state="up"])`).waitFor({ timeout: 10_000 });
  await page.locator(`[data-testid="cluster-member"][data-node="${next.id}"][data-state="up"]`).waitFor({ timeout: 5_000 });
  await page.locator(`[data-testid="placement-cell"][data-group="0"][data-node="${next.id}"][data-role="leader"]`).waitFor({ timeout: 5_000 });
  await page.locator('[data-testid="cluster-change"][data-group="0"]').filter({ hasText: `→ node ${next.id}` }).first().waitFor({ timeout: 5_000 });
  await shot(page, "cluster-view");
  // Rewound to before the kill: the old leader led group 0 then.
  await page.getByTestId("cluster-at").fill(beforeKill);
  await page.getByTestId("cluster-at-apply").click();
  await page.locator(`[data-testid="placement-cell"][data-group="0"][data-node="${leader.id}"][data-role="leader"]`).waitFor({ timeout: 5_000 });
  await page.getByTestId("cluster-title").filter({ hasText: "saw it at" }).waitFor();
  await page.getByTestId("cluster-at-now").click();
  await page.locator(`[data-testid="placement-cell"][data-group="0"][data-node="${next.id}"][data-role="leader"]`).waitFor({ timeout: 5_000 });
  // "lead here" on the other live voter: the lead moves there, as the view then shows.
  const other = cluster.members.find((m) => m.id !== leader.id && m.id !== next.id);
  await page.locator(`[data-testid="lead-here"][data-group="0"][data-node="${other.id}"]`).click();
  await page.getByTestId("cluster-moved").filter({ hasText: `to node ${other.id}` }).waitFor({ timeout: 10_000 });
  await page.locator(`[data-testid="placement-cell"][data-group="0"][data-node="${other.id}"][data-role="leader"]`).waitFor({ timeout: 5_000 });
  assert.equal((await other.req("GET", "/cluster")).json.groups[0].leader, other.id);
  assert.deepEqual(errors.filter((e) => !/WebSocket|Failed to load resource/.test(e)), []);
});
