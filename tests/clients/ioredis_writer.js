// An ioredis application that writes through a hotpair pair's Sentinel ports: one client made
// with the `sentinels` option, writing PREFIX:SEQ = SEQ in a loop; an error is counted and the
// next write goes on (no reconfiguration, no restart). Used by tests/follow_primary.rs and
// benches/client_gap.sh; the same arguments and summary as redis_py_writer.py.
//
//   node ioredis_writer.js --sentinels 127.0.0.1:7403,127.0.0.1:7503 --name hotpair \
//       --progress FILE --stop FILE --out FILE [--prefix js] [--pause-ms 1]
"use strict";
const fs = require("fs");
const Redis = require("ioredis");

function parseArgs(argv) {
  const args = { name: "hotpair", prefix: "js", "pause-ms": "1" };
  for (let i = 0; i < argv.length; i += 2) args[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const key of ["sentinels", "progress", "stop", "out"]) {
    if (!args[key]) throw new Error(`--${key} is required`);
  }
  return args;
}

function writeAtomically(path, text) {
  fs.writeFileSync(path + ".tmp", text);
  fs.renameSync(path + ".tmp", path);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const sentinels = args.sentinels.split(",").map((item) => {
    const at = item.lastIndexOf(":");
    return { host: item.slice(0, at), port: Number(item.slice(at + 1)) };
  });
  const client = new Redis({
    sentinels,
    name: args.name,
    failoverDetector: true,
    commandTimeout: 2000,
    maxRetriesPerRequest: 1,
    sentinelRetryStrategy: (times) => Math.min(times * 10, 200),
    retryStrategy: (times) => Math.min(times * 5, 100),
  });
  client.on("error", () => {});
  const acked = [];
  const ackMs = [];
  const errors = {};
  let seq = 0;
  let lastProgress = 0;
  while (!fs.existsSync(args.stop)) {
    seq += 1;
    try {
      await client.set(`${args.prefix}:${seq}`, String(seq));
      acked.push(seq);
      ackMs.push(Date.now());
    } catch (error) {
      const kind = `${error.name}: ${String(error.message).slice(0, 80)}`;
      errors[kind] = (errors[kind] || 0) + 1;
    }
    const now = Date.now();
    if (now - lastProgress > 20) {
      writeAtomically(args.progress, String(acked.length));
      lastProgress = now;
    }
    await sleep(Number(args["pause-ms"]));
  }
  writeAtomically(args.out, JSON.stringify({ client: "ioredis", attempts: seq, acked, ack_ms: ackMs, errors }));
  client.disconnect();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
