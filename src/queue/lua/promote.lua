-- Failed jobs whose retry time has come go back on the stream. KEYS: the
-- delayed set, the stream. ARGV: now (ms), the key prefix. Returns how
-- many were due.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 50)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[2] .. ':job:' .. id
  -- A job retried by hand or finished meanwhile is not queued again.
  if redis.call('HGET', job, 'state') == 'failed' then
    local e = redis.call('XADD', KEYS[2], '*', 'job', id)
    redis.call('HSET', job, 'entry', e)
    redis.call('HDEL', job, 'retry_at')
  end
end
return #due
