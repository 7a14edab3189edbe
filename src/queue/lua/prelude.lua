-- Shared by every script (prepended). Keys of the script that includes it:
-- KEYS[1] job hash, KEYS[2] its history list, KEYS[3] the stream, KEYS[4]
-- the dead-letter list, KEYS[5] the retries waiting for their time (where
-- used).
local function transition(state, at, host, worker, attempt, note)
  local t = {state = state, at = at, host = host}
  if worker and worker ~= '' then t.worker = worker end
  if attempt then t.attempt = attempt end
  if note and note ~= '' then t.note = note end
  redis.call('RPUSH', KEYS[2], cjson.encode(t))
end

-- Done with a delivery: out of the group's pending list and the stream.
local function ack(group, entry)
  redis.call('XACK', KEYS[3], group, entry)
  redis.call('XDEL', KEYS[3], entry)
end

-- A new delivery for the job; older entries are stale from now on.
local function enqueue(id)
  local e = redis.call('XADD', KEYS[3], '*', 'job', id)
  redis.call('HSET', KEYS[1], 'entry', e)
  redis.call('HDEL', KEYS[1], 'retry_at')
end

local function to_dead(id, now, host, worker, attempt, note)
  redis.call('HSET', KEYS[1], 'state', 'dead', 'updated_at', now, 'finished_at', now)
  transition('dead', now, host, worker, attempt, note)
  redis.call('LREM', KEYS[4], 0, id)
  redis.call('LPUSH', KEYS[4], id)
end

-- Whether the job is running under this worker for this delivery.
local function held_by(f_state, f_worker, f_entry, worker, entry)
  return f_state == 'running' and f_worker == worker and f_entry == entry
end
