// Shared by the Node client scenarios: run named async checks, print one PASS/FAIL/SKIP
// line each, exit non-zero when any failed.
'use strict';

class Skip extends Error {}

class Scenarios {
  constructor(client) {
    this.client = client;
    this.failed = 0;
  }

  async run(name, fn) {
    const start = Date.now();
    try {
      const note = await fn();
      const took = ((Date.now() - start) / 1000).toFixed(1);
      console.log(`PASS ${this.client} ${name} [${took}s]${note ? ` (${note})` : ''}`);
    } catch (e) {
      if (e instanceof Skip) {
        console.log(`SKIP ${this.client} ${name}: ${e.message}`);
        return;
      }
      this.failed += 1;
      console.log(`FAIL ${this.client} ${name}: ${e && e.stack && process.env.COMPAT_VERBOSE ? e.stack : e}`);
    }
  }

  finish() {
    process.exit(this.failed ? 1 : 0);
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await pred();
    if (v) return v;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

const unique = (prefix) => `${prefix}-${Math.random().toString(16).slice(2, 10)}`;

module.exports = { Scenarios, Skip, check, sleep, waitFor, unique };
