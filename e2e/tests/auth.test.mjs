// The explorer against a node with a token: the page itself loads, requests fail with a
// clear message until the token is set, then views and the live stream work.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Node, browser, shot } from "./harness.mjs";

const TOKEN = "e2e-secret-token";
let node, b, page;

before(async () => {
  node = await Node.start(["--auth-token", TOKEN]);
  ({ browser: b, page } = await browser());
});

after(async () => {
  await b?.close();
  await node?.close();
});

test("without the token a view says why; with it, views and the event stream work", async () => {
  await page.goto(`${node.base}/ui/#/locks`);
  const err = page.getByTestId("locks-error");
  await err.waitFor();
  assert.match(await err.textContent(), /401 .*unauthorized.*Set the node's token/);
  await shot(page, "auth-missing");

  await page.getByTestId("settings").click();
  await page.getByTestId("token").fill(TOKEN);
  await page.getByTestId("settings-save").click();
  await page.getByTestId("locks-summary").waitFor();

  await page.getByTestId("tab-heatmap").click();
  await page.getByTestId("heat-link").filter({ hasText: "live" }).waitFor();
  const auth = { authorization: `Bearer ${TOKEN}` };
  const holder = (await node.req("POST", "/txn/begin", { body: {}, headers: auth, expect: 201 })).json.txn;
  await node.req("PUT", "/ptr/x", { headers: { ...auth, "x-restm-txn": holder }, body: 1, expect: 200 });
  // The second writer waits 500 ms, times out and aborts: one lock wait and one conflict.
  const loser = (await node.req("POST", "/txn/begin", { body: {}, headers: auth, expect: 201 })).json.txn;
  await node.req("PUT", "/ptr/x", { headers: { ...auth, "x-restm-txn": loser }, body: 2, expect: 409 });
  await page.locator('rect[data-testid="heat-cell"][data-group="x"]').first().waitFor({ timeout: 10_000 });
});
