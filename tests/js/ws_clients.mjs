// MQTT.js (Node) against a Halyard WebSocket listener: a subscriber and a publisher on `url` with MQTT
// `protocolVersion` 4 or 5; the message must come back with its payload (and, for v5, its user property).
// Usage: node ws_clients.mjs <ws://host:port/mqtt | wss://...> <4|5> [ca.pem]
// Prints one JSON line and exits 0 on success; exits 1 (with the error) otherwise; 1 after 15 s at most.
import fs from "node:fs";
import mqtt from "mqtt";

const [url, versionArg, caFile] = process.argv.slice(2);
const protocolVersion = Number(versionArg);
const tls = caFile ? { ca: fs.readFileSync(caFile), rejectUnauthorized: true } : {};
const topic = `js/v${protocolVersion}/${new URL(url).protocol.replace(":", "")}`;
const payload = `hello from MQTT.js v${protocolVersion} over ${url}`;

const fail = (why) => {
  console.error(`FAILED: ${why}`);
  process.exit(1);
};
setTimeout(() => fail("timed out after 15 s"), 15000).unref();

const connect = (clientId) =>
  new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion, clientId, reconnectPeriod: 0, connectTimeout: 10000, ...tls });
    c.once("connect", (connack) => resolve({ c, connack }));
    c.once("error", reject);
    c.once("close", () => reject(new Error(`${clientId}: connection closed`)));
  });

try {
  const { c: sub, connack } = await connect(`js-sub-${protocolVersion}`);
  if (protocolVersion === 5 && !(connack.properties && connack.properties.receiveMaximum > 0)) {
    fail(`a v5 CONNACK carries Receive Maximum, got ${JSON.stringify(connack)}`);
  }
  const received = new Promise((resolve) =>
    sub.on("message", (t, p, packet) => resolve({ t, p: p.toString(), props: packet.properties })),
  );
  await sub.subscribeAsync(topic, { qos: 1 });
  const { c: pub } = await connect(`js-pub-${protocolVersion}`);
  const props = protocolVersion === 5 ? { properties: { userProperties: { from: "mqtt.js" } } } : {};
  await pub.publishAsync(topic, payload, { qos: 1, ...props });
  const m = await received;
  if (m.t !== topic || m.p !== payload) fail(`got ${m.t} ${m.p}`);
  if (protocolVersion === 5 && m.props?.userProperties?.from !== "mqtt.js") {
    fail(`the v5 user property did not arrive: ${JSON.stringify(m.props)}`);
  }
  await pub.endAsync();
  await sub.endAsync();
  console.log(JSON.stringify({ ok: true, url, protocolVersion, topic }));
  process.exit(0);
} catch (e) {
  fail(e && e.stack ? e.stack : String(e));
}
