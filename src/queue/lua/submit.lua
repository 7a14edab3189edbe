-- KEYS: job, history, stream, index. ARGV: id, kind, args (JSON), max
-- attempts, now, host.
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'kind', ARGV[2], 'args', ARGV[3], 'state', 'queued',
  'attempts', 0, 'max_attempts', ARGV[4], 'submitted_at', ARGV[5], 'submitted_by', ARGV[6],
  'updated_at', ARGV[5])
transition('queued', ARGV[5], ARGV[6], nil, nil, 'submitted')
enqueue(ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[1], ARGV[1])
return 1
