// roomcast through the Node `ws` client with perMessageDeflate: the extension is
// negotiated, and 1 KiB JSON bodies go both ways between a compressing client and a
// plain one. Run by tests/e2e/test_deflate.py (ROOMCAST_WS_URL, ROOMCAST_TOKEN,
// ROOMCAST_TOKEN2, ROOMCAST_ROOM).
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');

const URL_ = process.env.ROOMCAST_WS_URL;
const ROOM = process.env.ROOMCAST_ROOM || `node-deflate-${process.pid}`;

function open(token, perMessageDeflate) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(URL_, ['roomcast.v1'], {
      headers: { Authorization: `Bearer ${token}` },
      perMessageDeflate,
    });
    const queue = [];
    const waiters = [];
    ws.on('message', (data) => {
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
    ws.on('error', reject);
    ws.on('open', () => resolve({
      ws,
      send: (obj) => ws.send(JSON.stringify(obj)),
      next(pred, ms = 5000) {
        const i = queue.findIndex(pred);
        if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
        return new Promise((res, rej) => {
          const timer = setTimeout(() => rej(new Error('timed out waiting for a message')), ms);
          waiters.push({ pred, resolve: res, timer });
        });
      },
    }));
  });
}

function body(i) {
  const words = 'the meeting moved to thursday, can you bring the slides and the notes? ';
  return { kind: 'chat', id: `n-${i}`, text: `message ${i}: ${words.repeat(14)}` };
}

test('permessage-deflate with the ws client', async () => {
  const z = await open(process.env.ROOMCAST_TOKEN, { clientNoContextTakeover: false, threshold: 0 });
  const p = await open(process.env.ROOMCAST_TOKEN2, false);
  try {
    await exchange(z, p);
  } finally {
    z.ws.terminate();
    p.ws.terminate();
  }
});

async function exchange(z, p) {
  // `extensions` lists the names negotiated.
  assert.equal(z.ws.extensions, 'permessage-deflate');
  assert.equal(p.ws.extensions, '');
  for (const c of [z, p]) {
    c.send({ op: 'join', room: ROOM, ref: 'j' });
    await c.next((m) => m.op === 'joined');
  }
  // Each way: the compressing client's messages (with context takeover) reach the
  // plain one, and the plain one's reach the compressing one.
  for (let i = 0; i < 10; i++) {
    const [from, to] = i % 2 ? [p, z] : [z, p];
    const b = body(i);
    from.send({ op: 'send', room: ROOM, body: b, ref: `s${i}` });
    const got = await to.next((m) => m.op === 'msg' && m.body.id === b.id);
    assert.deepEqual(got.body, b);
  }
}
