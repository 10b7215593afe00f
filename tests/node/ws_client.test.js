// roomcast through the Node `ws` client: join, send, receive msg and ack.
//
// Needs a running server: ROOMCAST_WS_URL (ws://host:port/v1/ws) and two tokens,
// ROOMCAST_TOKEN and ROOMCAST_TOKEN2 (for two different users). tests/e2e/test_node.py
// starts the server and runs `node --test tests/node` with these set.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');

const URL_ = process.env.ROOMCAST_WS_URL;
const TOKEN = process.env.ROOMCAST_TOKEN;
const TOKEN2 = process.env.ROOMCAST_TOKEN2;
const ROOM = process.env.ROOMCAST_ROOM || `node-${process.pid}`;

// A connection with a queue of parsed frames and a `next(pred)` that waits for one.
function open(url, options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['roomcast.v1'], options);
    const queue = [];
    const waiters = [];
    ws.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, 'server sent a binary frame');
      const msg = JSON.parse(data.toString('utf8'));
      const i = waiters.findIndex((w) => w.pred(msg));
      if (i >= 0) {
        const [w] = waiters.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(msg);
      } else {
        queue.push(msg);
      }
    });
    ws.on('open', () => {
      resolve({
        ws,
        send: (obj) => ws.send(JSON.stringify(obj)),
        next(pred, ms = 5000) {
          const i = queue.findIndex(pred);
          if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
          return new Promise((res, rej) => {
            const w = { pred, resolve: res };
            w.timer = setTimeout(() => {
              waiters.splice(waiters.indexOf(w), 1);
              rej(new Error(`timed out; queued: ${JSON.stringify(queue).slice(0, 500)}`));
            }, ms);
            waiters.push(w);
          });
        },
        close: () => new Promise((res) => { ws.once('close', res); ws.close(1000); }),
      });
    });
    ws.on('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    ws.on('error', reject);
  });
}

test('environment is set', () => {
  assert.ok(URL_, 'ROOMCAST_WS_URL missing');
  assert.ok(TOKEN && TOKEN2, 'ROOMCAST_TOKEN/ROOMCAST_TOKEN2 missing');
});

test('subprotocol, join, send, msg and ack', async () => {
  const a = await open(URL_, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const b = await open(`${URL_}?access_token=${encodeURIComponent(TOKEN2)}`);
  try {
    assert.equal(a.ws.protocol, 'roomcast.v1');

    a.send({ op: 'join', room: ROOM, ref: 1 });
    const ja = await a.next((m) => m.ref === 1);
    assert.deepEqual(ja, { op: 'joined', ref: 1, room: ROOM, seq: 0 });
    b.send({ op: 'join', room: ROOM, ref: 'j' });
    const jb = await b.next((m) => m.ref === 'j');
    assert.equal(jb.op, 'joined');

    const diff = await a.next((m) => m.op === 'presence_diff');
    assert.equal(diff.room, ROOM);
    assert.deepEqual(diff.leaves, []);
    assert.equal(diff.joins.length, 1);

    b.send({ op: 'send', room: ROOM, body: { text: 'from node' }, ref: 's1', id: 'node-1' });
    const ack = await b.next((m) => m.op === 'ack');
    assert.equal(ack.ref, 's1');
    assert.equal(ack.room, ROOM);
    assert.equal(ack.seq, 1);
    assert.equal(ack.id, 'node-1');
    assert.equal(typeof ack.ts, 'number');

    for (const c of [a, b]) {
      const msg = await c.next((m) => m.op === 'msg');
      assert.deepEqual(msg, {
        op: 'msg', room: ROOM, seq: 1, ts: ack.ts, from: msg.from, body: { text: 'from node' }, id: 'node-1',
      });
      assert.equal(typeof msg.from, 'string');
    }

    a.send({ op: 'ping', ref: 42 });
    assert.deepEqual(await a.next((m) => m.ref === 42), { op: 'pong', ref: 42 });
  } finally {
    await a.close();
    await b.close();
  }
});

test('many messages arrive in seq order', async () => {
  const room = `${ROOM}-burst`;
  const a = await open(URL_, { headers: { Authorization: `Bearer ${TOKEN}` } });
  try {
    a.send({ op: 'join', room, ref: 'j' });
    await a.next((m) => m.ref === 'j');
    const n = 200;
    for (let i = 0; i < n; i++) a.send({ op: 'send', room, body: i });
    for (let i = 1; i <= n; i++) {
      const m = await a.next((x) => x.op === 'msg');
      assert.equal(m.seq, i);
      assert.equal(m.body, i - 1);
    }
  } finally {
    await a.close();
  }
});

test('missing token is refused with 401', async () => {
  await assert.rejects(open(URL_), /401/);
});
