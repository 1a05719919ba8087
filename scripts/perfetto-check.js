// Reads a `dmabuf replay --trace-format perfetto` document with a parser of
// the Chrome trace-event format from the npm registry (TracerBench's
// @tracerbench/trace-model: sorts events, builds processes and threads,
// turns slices into a containment tree, recognises flow and instant
// events) and checks it against the same replay's `--json` trace.
// Usage: node perfetto-check.js TRACE.json REPLAY.json (NODE_PATH set to
// where the package is installed). Exit 1 with the reasons when wrong.
'use strict';
const { buildModel } = require('@tracerbench/trace-model');
const cats = (e) => new Set([].concat(e.cat instanceof Set ? [...e.cat] : e.cat));
const fs = require('fs');
const doc = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const replay = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const model = buildModel(doc);
const errors = [];
if (model.processes.length !== 1) errors.push(`${model.processes.length} processes, want 1`);
const proc = model.processes[0];
const rows = replay.trace;
const tasks = [...new Set(rows.map((r) => r.task))].sort();
const threads = proc.threads.map((t) => t.name).sort();
if (JSON.stringify(tasks) !== JSON.stringify(threads)) errors.push(`threads ${threads} != tasks ${tasks}`);
let slices = 0, flowBegin = 0, flowEnd = 0, hazards = 0;
for (const t of proc.threads) {
  for (const e of t.events) {
    if (e.isComplete() && (cats(e).has('event') || cats(e).has('hazard'))) {
      slices++;
      const row = rows.find((r) => r.row === e.args.row);
      if (!row || row.name !== e.name || row.task !== t.name) errors.push(`slice ${e.name} row ${e.args.row} is not that trace row`);
    }
    if (e.isComplete() && e.parent && (e.parent.start > e.start || e.parent.end < e.end)) errors.push(`slice ${e.name} outside its parent`);
    if (e.isFlowBegin()) flowBegin++;
    if (e.isFlowEnd()) flowEnd++;
    if (e.isInstant() && cats(e).has('hazard')) hazards++;
  }
}
// Counters: one value per count row, the row's value (`refcount` of
// kref_get/kref_put/kref_init, `done` of complete/wait_for_completion_end/
// reinit_completion), in row order, as the model reads the `C` events.
const countRows = rows
  .filter((r) => r.args && r.args.kref && (r.args.refcount !== undefined || r.args.done !== undefined))
  .filter((r) => /^\d+$/.test(r.args.refcount !== undefined ? r.args.refcount : r.args.done))
  .map((r) => (r.args.refcount !== undefined ? `${r.args.kref} refcount=${r.args.refcount}` : `${r.args.kref} done=${r.args.done}`));
const counters = proc.threads
  .flatMap((t) => t.events.filter((e) => e.isCounter()))
  .sort((a, b) => a.start - b.start)
  .map((e) => `${e.name.split(' ')[0]} ${Object.keys(e.args)[0]}=${Object.values(e.args)[0]}`);
if (JSON.stringify(countRows) !== JSON.stringify(counters)) errors.push(`counters ${counters.slice(0, 4)} != count rows ${countRows.slice(0, 4)} (${counters.length} vs ${countRows.length})`);
const hazardRows = rows.filter((r) => r.name === 'hazard').length;
if (slices !== rows.length) errors.push(`${slices} row slices for ${rows.length} trace rows`);
if (flowBegin !== flowEnd || flowBegin === 0) errors.push(`flows: ${flowBegin} begin(s), ${flowEnd} end(s)`);
if (hazards !== hazardRows) errors.push(`${hazards} hazard instants for ${hazardRows} hazard rows`);
if (errors.length) {
  console.log('perfetto-check: FAILED:\n  ' + errors.join('\n  '));
  process.exit(1);
}
console.log(`perfetto-check: ok (TracerBench trace model: ${threads.length} threads, ${slices} row slices, ${flowBegin} flows, ${hazards} hazards, ${counters.length} counter values)`);
