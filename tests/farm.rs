//! The build farm against a real redis-server (started here on 127.0.0.1)
//! and the real local Glance (scripts/test starts it): 20 import jobs run
//! by three workers while one is SIGKILLed, one stalls (SIGSTOP) past its
//! lease and comes back, and one is stopped with SIGTERM; every job ends
//! succeeded exactly once with exactly one image in Glance and one file on
//! disk. A job that fails goes to the dead-letter list after its attempts
//! and `queue retry` brings it back, over TLS with an ACL user. Needs root.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cloud::cloud;
use common::redis::{self, Redis};
use common::*;
use serde_json::Value;

/// Seconds a worker's lease lasts in these tests.
const LEASE: &str = "5";

/// `dbimage` with this scratch's directories, the queue under `prefix`.
fn farm_cmd(scratch: &Scratch, redis: &Redis, prefix: &str) -> Command {
    let mut c = scratch.cmd();
    redis.env(&mut c, prefix);
    c.env("DBIMAGE_QUEUE_LEASE", LEASE).env("DBIMAGE_QUEUE_RETRY_DELAY", "1");
    c
}

/// Runs `dbimage ARGS` against the queue; its output.
fn farm(scratch: &Scratch, redis: &Redis, prefix: &str, args: &[&str]) -> Output {
    let mut c = farm_cmd(scratch, redis, prefix);
    c.args(args);
    run(c)
}

/// Submits a job; returns its number.
fn submit(scratch: &Scratch, redis: &Redis, prefix: &str, args: &[&str]) -> u64 {
    let mut c = farm_cmd(scratch, redis, prefix);
    c.args(["queue", "submit"]).args(args);
    let out = run(c);
    assert!(out.status.success(), "submit {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Background workers, ended with everything they started if a test
/// fails before it stops them.
struct Workers(Vec<Spawned>);

/// A worker in the background, its terminal output in `log`.
fn worker(c: Command, log: &Path, extra: &[&str]) -> Spawned {
    let mut c = c;
    let out = std::fs::File::create(log).unwrap();
    c.args(["worker", "--log-dir"])
        .arg(log.with_extension("jobs"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    spawn(c)
}

/// `dbimage jobs -f json`.
fn jobs(scratch: &Scratch, redis: &Redis, prefix: &str) -> Vec<Value> {
    let mut c = farm_cmd(scratch, redis, prefix);
    let out = c.args(["jobs", "-f", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// `dbimage jobs show ID -f json`: (job, history).
fn show(scratch: &Scratch, redis: &Redis, prefix: &str, id: u64) -> (Value, Vec<Value>) {
    let mut c = farm_cmd(scratch, redis, prefix);
    let out = c.args(["jobs", "show", &id.to_string(), "-f", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["job"].clone(), v["history"].as_array().unwrap().clone())
}

/// Waits for `what` to hold, polling; panics with `why` after `secs`.
fn wait_until<T>(secs: u64, why: &str, mut what: impl FnMut() -> Option<T>) -> T {
    let _w = waiting_for(format!("{why} (at most {secs} s)"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = what() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first job running on the worker with this PID.
fn running_on(jobs: &[Value], pid: u32) -> Option<u64> {
    let tag = format!(":{pid}:");
    jobs.iter()
        .find(|j| j["state"] == "running" && j["worker"].as_str().is_some_and(|w| w.contains(&tag)))
        .and_then(|j| j["id"].as_u64())
}

fn signal(child: &Spawned, sig: &str) {
    sh(&format!("kill -{sig} {}", child.id()));
}

/// Waits for a worker to exit; its status.
fn wait_exit(child: &mut Spawned, secs: u64, what: &str) -> std::process::ExitStatus {
    wait_until(secs, what, || child.try_wait().unwrap())
}

/// No process whose command line names a file under `dir` is left.
fn no_process_of(dir: &Path) -> bool {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().all(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        !String::from_utf8_lossy(&cmdline).contains(&needle)
    })
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| stat_field(*p, 1).as_deref() == Some(parent.as_str()))
        .collect()
}

/// Field `n` after the command name of /proc/PID/stat (0: state, 1: ppid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(n).map(str::to_string)
}

/// Stops (SIGSTOP) the process group of one job the worker runs, so that
/// the job cannot finish before the worker is told to stop; the job's id
/// and its group. None when no job of the worker is there to stop.
fn freeze_a_job(worker: u32, names: &[String], ids: &[u64]) -> Option<(u64, u32)> {
    for pid in children_of(worker) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let Some(at) = args.iter().position(|a| a == "--name").and_then(|i| names.iter().position(|n| Some(n) == args.get(i + 1)))
        else {
            continue;
        };
        sh(&format!("kill -STOP -{pid}"));
        let state = wait_until(10, "a job's process to stop on SIGSTOP", || match stat_field(pid, 0) {
            None => Some("gone".to_string()),
            Some(s) if ["R", "S", "D"].contains(&s.as_str()) => None,
            Some(s) => Some(s),
        });
        if state == "T" {
            return Some((ids[at], pid));
        }
        sh(&format!("kill -CONT -{pid}")); // it ended meanwhile
    }
    None
}

fn states(history: &[Value]) -> Vec<String> {
    history.iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_job_succeeds_once_through_kills_stalls_and_stops() {
    require_root();
    let cloud = cloud();
    let redis = Redis::start(false);
    let scratch = Scratch::new();
    let prefix = "farm-kill";
    let dir = scratch.dir.path().join("in");
    let logs = scratch.dir.path().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    let raw = source_disk(&dir, "src", 24);
    let vmdk = convert(&raw, "vmdk");
    let names: Vec<String> = (0..20).map(|i| format!("farm-job-{i}")).collect();
    for name in &names {
        for old in cloud.images_named(name) {
            cloud.delete_image(old["id"].as_str().unwrap());
        }
    }
    // --force: a retried attempt may find the file its killed one renamed
    // into place before publishing.
    let ids: Vec<u64> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let src = if i % 2 == 0 { &raw } else { &vmdk };
            // The test cloud's Glance keeps its records in SQLite, which may
            // refuse one of several concurrent uploads ("database is
            // locked"): such an attempt fails and is retried.
            submit(
                &scratch,
                &redis,
                prefix,
                &["--max-attempts", "6", "import", &src.to_string_lossy(), "--name", name, "--force"],
            )
        })
        .collect();
    let with_cloud = || {
        let mut c = farm_cmd(&scratch, &redis, prefix);
        cloud.env(&mut c, "dbimage-admin");
        c
    };
    let mut workers = Workers(
        ["a", "b", "c"].iter().map(|w| worker(with_cloud(), &logs.join(format!("{w}.log")), &["-n", "2"])).collect(),
    );
    let [a, b, c] = &mut workers.0[..] else { unreachable!() };

    // A dies mid-job: its lease expires and another worker takes the job up.
    let killed = wait_until(120, "a job running on worker a", || running_on(&jobs(&scratch, &redis, prefix), a.id()));
    signal(a, "KILL");
    a.wait();
    // B stalls past its lease, then comes back: the job must still be
    // completed once, by whichever attempt finishes first.
    let stalled = wait_until(120, "a job running on worker b", || running_on(&jobs(&scratch, &redis, prefix), b.id()));
    signal(b, "STOP");
    let b_tag = format!(":{}:", b.id());
    wait_until(120, "another worker to take over b's job", || {
        let (_, history) = show(&scratch, &redis, prefix, stalled);
        history
            .iter()
            .any(|t| t["note"].as_str().is_some_and(|n| n.contains("lease expired") && n.contains(&b_tag)))
            .then_some(())
    });
    signal(b, "CONT");
    // C is stopped with SIGTERM mid-job: it hands its jobs back and exits 0.
    // Its job is frozen until the worker has the signal, so that it cannot
    // finish first: handing it back is then the only right outcome.
    let (stopped, group) = wait_until(120, "a job of worker c to freeze", || freeze_a_job(c.id(), &names, &ids));
    signal(c, "TERM");
    wait_until(60, "worker c to start handing its jobs back", || {
        std::fs::read_to_string(logs.join("c.log")).unwrap().contains("and handing them back").then_some(())
    });
    sh(&format!("kill -CONT -{group}"));
    let status = wait_exit(c, 120, "worker c to stop");
    assert!(status.success(), "worker c: {status}");
    let (job, history) = show(&scratch, &redis, prefix, stopped);
    let c_tag = format!(":{}:", c.id());
    assert!(
        history.iter().any(|t| t["state"] == "queued"
            && t["worker"].as_str().is_some_and(|w| w.contains(&c_tag))
            && t["note"].as_str().is_some_and(|n| n.contains("handed back"))),
        "job {stopped} was not handed back by worker c: {history:#?}"
    );
    assert!(job["state"] != "running" || !job["worker"].as_str().unwrap().contains(&c_tag), "{job}");

    workers.0.push(worker(with_cloud(), &logs.join("d.log"), &["-n", "2"]));
    let [a, b, _, d] = &mut workers.0[..] else { unreachable!() };
    wait_until(600, "every job to succeed", || {
        let all = jobs(&scratch, &redis, prefix);
        assert!(all.iter().all(|j| j["state"] != "dead"), "{all:#?}");
        (all.len() == 20 && all.iter().all(|j| j["state"] == "succeeded")).then_some(())
    });
    for w in [&mut *b, &mut *d] {
        signal(w, "TERM");
        let status = wait_exit(w, 120, "a worker to stop");
        assert!(status.success(), "{status}");
    }
    let worker_logs: String = ["a", "b", "c", "d"]
        .iter()
        .map(|w| std::fs::read_to_string(logs.join(format!("{w}.log"))).unwrap())
        .collect();
    eprintln!("--- worker logs\n{worker_logs}");

    // Exactly once: one success in each history, one image in Glance, one file.
    for (id, name) in ids.iter().zip(&names) {
        let (job, history) = show(&scratch, &redis, prefix, *id);
        let s = states(&history);
        assert_eq!(s.iter().filter(|s| *s == "succeeded").count(), 1, "job {id}: {history:#?}");
        assert_eq!(s.first().map(String::as_str), Some("queued"));
        assert!(job["log_tail"].as_str().unwrap().contains(&format!("{name}.qcow2")), "{job}");
        let images = cloud.images_named(name);
        assert_eq!(images.len(), 1, "{name}: {images:#?}");
        assert_eq!(images[0]["status"], "active");
    }
    let mut files = scratch.outputs();
    files.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("{n}.qcow2")).collect();
    expected.sort();
    assert_eq!(files, expected);
    // The killed worker's job: failed by lease expiry, then done elsewhere.
    let a_tag = format!(":{}:", a.id());
    let (job, history) = show(&scratch, &redis, prefix, killed);
    assert!(
        history.iter().any(|t| t["state"] == "failed"
            && t["note"].as_str().is_some_and(|n| n.contains("lease expired") && n.contains(&a_tag))),
        "{history:#?}"
    );
    assert!(!job["worker"].as_str().unwrap().contains(&a_tag), "{job}");
    // The stalled job ran twice but was recorded once; one of the workers
    // saw the other's attempt.
    let (_, history) = show(&scratch, &redis, prefix, stalled);
    assert!(states(&history).iter().filter(|s| *s == "running").count() >= 2, "{history:#?}");
    let stalled_line = |what: &str| worker_logs.contains(&format!("job {stalled}: {what}"));
    assert!(
        stalled_line("another attempt had already succeeded; this one is not recorded")
            || stalled_line("stopped; another worker holds it now")
            || stalled_line("the lease passed to another worker"),
        "no worker noticed the second attempt of job {stalled}"
    );
    // Nothing left: no delivery pending or queued, no process, mount, loop
    // device or work file; the password never printed.
    assert_eq!(redis.cli(&["XLEN", &format!("{prefix}:stream")]), "0");
    let pending = redis.cli(&["XPENDING", &format!("{prefix}:stream"), "workers"]);
    assert!(pending.starts_with('0'), "{pending}");
    assert!(!worker_logs.contains(redis::PASSWORD));
    assert!(!worker_logs.contains("reconnecting"), "a signal was taken for a queue failure");
    assert!(no_process_of(scratch.dir.path()), "a job's process outlived its worker");
    scratch.assert_clean();
    assert!(no_daemon_of(scratch.dir.path()));
    for name in &names {
        for img in cloud.images_named(name) {
            cloud.delete_image(img["id"].as_str().unwrap());
        }
    }
}

#[test]
fn a_failing_job_goes_dead_and_retry_brings_it_back_over_tls() {
    require_root();
    let redis = Redis::start(true);
    let scratch = Scratch::new();
    let prefix = "farm-dead";
    let dir = scratch.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("late.vdi");
    let id = submit(
        &scratch,
        &redis,
        prefix,
        &["--max-attempts", "2", "import", &missing.to_string_lossy(), "--no-publish"],
    );
    let logs = scratch.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let drain = |name: &str| -> Output {
        let mut c = farm_cmd(&scratch, &redis, prefix);
        c.env("DBIMAGE_QUEUE_RETRY_DELAY", "2");
        let mut w = Workers(vec![worker(c, &logs.join(name), &["-n", "2", "--drain"])]);
        let status = wait_exit(&mut w.0[0], 120, "a draining worker to finish");
        Output { status, stdout: Vec::new(), stderr: std::fs::read(logs.join(name)).unwrap() }
    };
    let first = drain("w1.log");
    let log = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(!log.contains(redis::PASSWORD), "{log}");
    assert_eq!(first.status.code(), Some(1), "a draining worker whose job died fails: {log}");
    assert!(log.contains("1 job(s) ended in the dead-letter list"), "{log}");

    let (job, history) = show(&scratch, &redis, prefix, id);
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempts"], 2);
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("late.vdi") && error.contains("no such file"), "{error}");
    assert_eq!(states(&history), ["queued", "running", "failed", "running", "failed", "dead"]);
    // The second attempt waited for its retry time (2 s), and the draining
    // worker waited for it.
    let secs = |t: &Value| -> i64 {
        let hms: Vec<i64> = t["at"].as_str().unwrap()[11..19].split(':').map(|n| n.parse().unwrap()).collect();
        hms[0] * 3600 + hms[1] * 60 + hms[2]
    };
    assert!((secs(&history[3]) - secs(&history[2])).rem_euclid(86_400) >= 1, "{history:#?}");
    assert_eq!(redis.cli(&["LRANGE", &format!("{prefix}:dead"), "0", "-1"]), id.to_string());
    // The people's view shows the same.
    let text = farm(&scratch, &redis, prefix, &["jobs", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("state        dead") && text.contains("history:") && text.contains("log tail:"), "{text}");
    let listed = farm(&scratch, &redis, prefix, &["jobs", "--state", "dead"]);
    assert!(String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.starts_with(&format!("{id} ")) && l.contains("dead")));

    // Retrying a job that is not dead, or none, changes nothing.
    let out = farm(&scratch, &redis, prefix, &["queue", "retry", "999"]);
    assert_eq!(out.status.code(), Some(2));

    // The file arrives; the retried job runs again from attempt 1.
    let raw = source_disk(&dir, "late", 0);
    std::fs::rename(convert(&raw, "vdi"), &missing).unwrap();
    let out = farm(&scratch, &redis, prefix, &["queue", "retry", &id.to_string()]);
    assert!(out.status.success());
    assert_eq!(redis.cli(&["LLEN", &format!("{prefix}:dead")]), "0");
    let second = drain("w2.log");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let (job, history) = show(&scratch, &redis, prefix, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(states(&history)[6..], ["queued", "running", "succeeded"]);
    assert!(scratch.out().join("late.qcow2").is_file());
    let out = farm(&scratch, &redis, prefix, &["queue", "retry", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "a succeeded job cannot be retried");
    scratch.assert_clean();
}

#[test]
fn bad_submissions_and_bad_credentials_are_refused() {
    let redis = Redis::start(false);
    let scratch = Scratch::new();
    let prefix = "farm-bad";
    let refused = |args: &[&str], env: &[(&str, &str)]| -> String {
        let mut c = farm_cmd(&scratch, &redis, prefix);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = run(c);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
        assert!(!err.contains(redis::PASSWORD) && !err.contains("wrong-pw-4242"), "{err}");
        err
    };
    let err = refused(&["queue", "submit", "import", "/srv/a.vmdk", "--no-such-flag"], &[]);
    assert!(err.contains("job arguments for `import`"), "{err}");
    let err = refused(&["queue", "submit", "import", "/srv/a.vmdk"], &[("DBIMAGE_REDIS_PASSWORD", "wrong-pw-4242")]);
    assert!(err.contains("cannot reach the queue at redis://127.0.0.1:") && err.contains("check queue.url"), "{err}");
    let err = refused(&["jobs"], &[("DBIMAGE_REDIS_URL", "")]);
    assert!(err.contains("no build farm queue is configured"), "{err}");
    let err = refused(&["worker"], &[("DBIMAGE_REDIS_URL", "http://127.0.0.1:1/")]);
    assert!(err.contains("redis://"), "{err}");
    // A job's --help is the command's help, and queues nothing.
    let help = farm(&scratch, &redis, prefix, &["queue", "submit", "import", "/srv/a.vmdk", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--no-publish"));
    // Nothing was queued by any of them, and reading a farm creates none.
    let listed = farm(&scratch, &redis, prefix, &["jobs"]);
    assert!(listed.status.success());
    assert_eq!(redis.cli(&["EXISTS", &format!("{prefix}:seq"), &format!("{prefix}:stream")]), "0");
}

#[test]
fn a_dead_workers_job_behind_ten_live_ones_is_taken_up_first() {
    let redis = Redis::start(false);
    let scratch = Scratch::new();
    let prefix = "farm-claim";
    let missing = scratch.dir.path().join("missing.raw");
    let ids: Vec<u64> = (0..12)
        .map(|_| submit(&scratch, &redis, prefix, &["--max-attempts", "1", "import", &missing.to_string_lossy(), "--no-publish"]))
        .collect();
    let stream = format!("{prefix}:stream");
    // A "ghost" worker takes all twelve and dies; a live one holds the
    // first eleven (its claims renew their idle time), not the last.
    redis.cli(&["XREADGROUP", "GROUP", "workers", "ghost", "COUNT", "12", "STREAMS", &stream, ">"]);
    std::thread::sleep(Duration::from_millis(3500));
    let entries = redis.cli(&["XRANGE", &stream, "-", "+"]);
    let entry_ids: Vec<&str> = entries.lines().filter(|l| l.contains('-') && !l.contains('/')).collect();
    assert_eq!(entry_ids.len(), 12, "{entries}");
    let mut claim = vec!["XCLAIM", stream.as_str(), "workers", "live", "0"];
    claim.extend(&entry_ids[..11]);
    claim.push("JUSTID");
    redis.cli(&claim);
    let logs = scratch.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut c = farm_cmd(&scratch, &redis, prefix);
    c.env("DBIMAGE_QUEUE_LEASE", "3");
    let mut w = Workers(vec![worker(c, &logs.join("w.log"), &["-n", "1", "--drain"])]);
    let status = wait_exit(&mut w.0[0], 120, "the draining worker");
    let log = std::fs::read_to_string(logs.join("w.log")).unwrap();
    assert!(!status.success(), "twelve dead jobs: {log}");
    let first = log.lines().find(|l| l.contains("attempt 1 of 1 started")).unwrap_or_default();
    assert!(first.starts_with(&format!("job {} ", ids[11])), "the expired lease is taken up first: {log}");
    // The others are the live worker's: a draining worker does not wait
    // for leases that have not expired.
    let all = jobs(&scratch, &redis, prefix);
    let dead: Vec<u64> = all.iter().filter(|j| j["state"] == "dead").map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(dead, [ids[11]], "{all:#?}");
    assert!(log.contains("1 job(s) ended in the dead-letter list"), "{log}");
}

#[test]
fn a_worker_cut_off_from_redis_stops_its_job_and_recovers() {
    require_root();
    let mut redis = Redis::start(false);
    let scratch = Scratch::new();
    let prefix = "farm-fence";
    let dir = scratch.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    // Big enough that converting it outlasts two thirds of the lease.
    let slow = {
        let tree = dir.join("slow-tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
        sh(&format!("head -c 500M /dev/urandom > {}/blob", tree.display()));
        let raw = dir.join("slow.raw");
        sh(&format!("truncate -s 700M {}", raw.display()));
        sh(&format!("printf 'label: dos\\nstart=2048, type=83\\n' | sfdisk -q {}", raw.display()));
        sh(&format!("mkfs.ext4 -q -F -E offset=1048576 -d {} {} 690M", tree.display(), raw.display()));
        std::fs::remove_dir_all(tree).unwrap();
        raw
    };
    let small = source_disk(&dir, "small", 0);
    let id = submit(&scratch, &redis, prefix, &["import", &slow.to_string_lossy(), "--no-publish"]);
    let logs = scratch.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("w.log");
    let mut w = Workers(vec![worker(farm_cmd(&scratch, &redis, prefix), &log, &["-n", "1"])]);
    wait_until(60, "the slow job to run", || {
        jobs(&scratch, &redis, prefix).iter().any(|j| j["id"] == id && j["state"] == "running").then_some(())
    });
    // Redis dies mid-job: the worker must stop the job within two thirds of
    // its lease after the last renewal, so before the lease can expire and
    // another worker take the job up (and run it twice).
    let lease = Duration::from_secs(LEASE.parse().unwrap());
    let down = Instant::now();
    redis.crash();
    wait_until(lease.as_secs(), "the worker to stop its job while Redis is down, within the lease", || {
        no_process_of(&slow).then_some(())
    });
    let stopped_after = down.elapsed();
    eprintln!("the job stopped {stopped_after:?} after Redis died");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("job {id}: its lease could not be renewed")), "{text}");
    assert!(stopped_after < lease, "the job ran {stopped_after:?} after Redis died, past its lease: {text}");
    std::thread::sleep(Duration::from_secs(6).saturating_sub(down.elapsed()));
    redis.restart();
    // Redis is back, empty: the worker finds the job's record gone, carries
    // on and takes new jobs.
    wait_until(60, "the worker to settle the stopped job", || {
        std::fs::read_to_string(&log).unwrap().contains(&format!("job {id}: its record is gone from Redis")).then_some(())
    });
    let again = submit(&scratch, &redis, prefix, &["import", &small.to_string_lossy(), "--no-publish"]);
    wait_until(120, "the new job to succeed", || {
        jobs(&scratch, &redis, prefix).iter().any(|j| j["id"] == again && j["state"] == "succeeded").then_some(())
    });
    signal(&w.0[0], "TERM");
    let status = wait_exit(&mut w.0[0], 60, "the worker to stop");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(!scratch.out().join("slow.qcow2").exists(), "the stopped job left its output");
    scratch.assert_clean();
}
