// A real browser: headless Chromium (Debian's, driven by playwright-core) loads a page served here that uses
// MQTT.js's browser bundle to subscribe over `wsUrl`. Once the page has its SUBACK this prints "SUBSCRIBED";
// whoever runs it then publishes `expected` to `topic` (the Rust test uses mosquitto_pub), and once the page
// shows it this prints "RECEIVED <text>" and exits 0. Exits 1 on any failure, after 30 s at most.
// Usage: node browser.mjs <ws://host:port/mqtt> <topic> <expected payload> [screenshot.png]
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [wsUrl, topic, expected, screenshot] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const bundle = fs.readFileSync(path.join(here, "node_modules/mqtt/dist/mqtt.min.js"));
let browser;
const fail = async (why) => {
  console.error(`FAILED: ${why}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
};
setTimeout(() => fail("timed out after 30 s"), 30000).unref();

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>Halyard over WebSocket</title><script src="/mqtt.min.js"></script></head>
<body><h1>Halyard over WebSocket</h1><p>state: <span id="state">connecting</span></p><ul id="messages"></ul>
<script>
  const client = mqtt.connect(${JSON.stringify(wsUrl)}, { protocolVersion: 5, clientId: "chromium-page", reconnectPeriod: 0 });
  const state = (s) => (document.getElementById("state").textContent = s);
  client.on("connect", () => {
    state("connected");
    client.subscribe(${JSON.stringify(topic)}, { qos: 1 }, (err) => state(err ? "subscribe failed: " + err : "subscribed"));
  });
  client.on("message", (t, payload) => {
    const li = document.createElement("li");
    li.textContent = t + ": " + payload.toString();
    document.getElementById("messages").appendChild(li);
  });
  client.on("error", (e) => state("error: " + e));
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url === "/mqtt.min.js") {
    res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
  } else if (req.url === "/favicon.ico") {
    res.writeHead(204).end();
  } else if (req.url === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const tab = await browser.newPage();
  tab.on("console", (m) => console.error(`page console: ${m.text()}`));
  await tab.goto(pageUrl);
  await tab.waitForFunction(() => document.getElementById("state").textContent === "subscribed", null, { timeout: 15000 })
    .catch(async () => fail(`page state: ${await tab.textContent("#state")}`));
  console.log("SUBSCRIBED");
  const item = tab.locator("#messages li", { hasText: expected });
  await item.waitFor({ timeout: 15000 });
  const text = await item.textContent();
  if (screenshot) await tab.screenshot({ path: screenshot });
  console.log(`RECEIVED ${text}`);
  await browser.close();
  server.close();
  process.exit(0);
} catch (e) {
  await fail(e && e.stack ? e.stack : String(e));
}
