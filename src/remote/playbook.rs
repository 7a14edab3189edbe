//! Playbooks: YAML lists of tasks run in order against one host.
//!
//! A task has one action — `run` (a shell command), `copy` (a local file or
//! directory to the host), `fetch` (a remote file to here) or `template` (a
//! local minijinja template rendered and written to the host) — and may add
//! `name`, `become` (as root), `register` (keep `stdout`, `stderr`, `rc`),
//! `when` (an expression), `no_log` (nothing of it reaches the log),
//! `stream` (show output lines as they come), `ignore_errors` and `always`
//! (runs even after an earlier task failed, for cleanup) and `loop` (a list;
//! the task runs once per entry, which it sees as `item`). Every string is a
//! minijinja template with strict undefined variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Deserialize;

use super::RemoteError;
use super::ssh::{self, Connection, Exec};

/// Variables a playbook sees and registers.
pub type Vars = BTreeMap<String, Value>;

/// Errors loading or running a playbook.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    /// The file is missing or malformed.
    #[error("playbook {path}: {msg}")]
    Invalid {
        /// The playbook.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A task failed.
    #[error("task '{task}' on {host}: {error}")]
    Task {
        /// The task's name.
        task: String,
        /// The host.
        host: String,
        /// What went wrong (in the message, not a separate cause, so it is
        /// printed once).
        error: TaskError,
    },
}

impl PlaybookError {
    /// Whether the connection dropped (as opposed to a command failing).
    pub fn is_lost(&self) -> bool {
        matches!(self, PlaybookError::Task { error: TaskError::Remote(RemoteError::Lost { .. }), .. })
    }
}

/// Why one task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A template or `when` expression did not render.
    #[error("{0}")]
    Template(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
    /// The remote side asked for a local write dbimage does not make (a
    /// fetch destination outside its directory, hidden, or a symlink).
    #[error("{0}")]
    Refused(String),
    /// The remote side failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// A task as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    name: Option<String>,
    run: Option<String>,
    copy: Option<Transfer>,
    fetch: Option<Transfer>,
    template: Option<Transfer>,
    register: Option<String>,
    when: Option<String>,
    #[serde(rename = "become", default)]
    become_root: bool,
    #[serde(default)]
    no_log: bool,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    ignore_errors: bool,
    #[serde(default)]
    always: bool,
    #[serde(rename = "loop")]
    items: Option<Vec<String>>,
}

/// `src`, `dest` and an optional octal `mode` (templates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    src: String,
    dest: String,
    mode: Option<String>,
}

/// What a task does.
#[derive(Debug, Clone)]
enum Action {
    Run(String),
    Copy(Transfer),
    Fetch(Transfer),
    Template(Transfer),
}

/// One checked task.
#[derive(Debug, Clone)]
struct Task {
    name: String,
    action: Action,
    register: Option<String>,
    when: Option<String>,
    become_root: bool,
    no_log: bool,
    stream: bool,
    ignore_errors: bool,
    always: bool,
    /// Run once per item, with the item as `item`.
    items: Option<Vec<String>>,
}

/// A loaded, checked playbook.
#[derive(Debug)]
pub struct Playbook {
    path: PathBuf,
    tasks: Vec<Task>,
}

/// The template environment: strict, with a `quote` filter for shell words.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("quote", |v: Value| ssh::quote(&v.to_string()));
    env
}

impl Playbook {
    /// Reads and checks `path`: every task has exactly one action, its
    /// templates parse, and `register` names are identifiers.
    pub fn load(path: &Path) -> Result<Playbook, PlaybookError> {
        let invalid = |msg: String| PlaybookError::Invalid { path: path.to_path_buf(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let files: Vec<TaskFile> = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let env = environment();
        let mut tasks = Vec::new();
        for (i, f) in files.into_iter().enumerate() {
            let name = f.name.clone().unwrap_or_else(|| format!("task {}", i + 1));
            let at = |msg: String| invalid(format!("task '{name}': {msg}"));
            let mut actions = Vec::new();
            if let Some(r) = f.run {
                actions.push(Action::Run(r));
            }
            if let Some(t) = f.copy {
                actions.push(Action::Copy(t));
            }
            if let Some(t) = f.fetch {
                actions.push(Action::Fetch(t));
            }
            if let Some(t) = f.template {
                actions.push(Action::Template(t));
            }
            if actions.len() != 1 {
                return Err(at("needs exactly one of run, copy, fetch, template".into()));
            }
            let action = actions.remove(0);
            let mut strings: Vec<&str> = match &action {
                Action::Run(r) => vec![r],
                Action::Copy(t) | Action::Fetch(t) | Action::Template(t) => {
                    vec![&t.src, &t.dest]
                }
            };
            strings.extend(f.name.as_deref());
            for s in strings {
                env.template_from_str(s).map_err(|e| at(e.to_string()))?;
            }
            if let Some(w) = &f.when {
                env.compile_expression(w).map_err(|e| at(format!("when: {e}")))?;
            }
            if let Action::Copy(t) | Action::Fetch(t) | Action::Template(t) = &action {
                parse_mode(t.mode.as_deref()).map_err(|e| at(e.to_string()))?;
            }
            if let Some(r) = &f.register
                && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(at(format!("register: {r:?} is not a variable name")));
            }
            tasks.push(Task {
                name,
                action,
                register: f.register,
                when: f.when,
                become_root: f.become_root,
                no_log: f.no_log,
                stream: f.stream,
                ignore_errors: f.ignore_errors,
                always: f.always,
                items: f.items,
            });
        }
        if tasks.is_empty() {
            return Err(invalid("has no tasks".into()));
        }
        Ok(Playbook { path: path.to_path_buf(), tasks })
    }

    /// Runs the tasks against `conn` in order. After a failure only
    /// `always` tasks run (on a new connection if the old one dropped); the
    /// first failure is returned. `on_line` gets the lines of `stream` tasks.
    pub fn run(
        &self,
        conn: &mut Connection,
        vars: &mut Vars,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), PlaybookError> {
        let env = environment();
        let base = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut failed: Option<PlaybookError> = None;
        // Whether the connection is known to be gone (reconnect once for
        // `always` tasks; give up on them when that fails).
        let mut lost = false;
        for task in &self.tasks {
            let host = conn.target().to_string();
            let wrap = |error: TaskError| PlaybookError::Task { task: task.name.clone(), host: host.clone(), error };
            if failed.is_none() && crate::run::cancelled() {
                failed = Some(wrap(RemoteError::Interrupted.into()));
            }
            if failed.is_some() && !task.always {
                continue;
            }
            if lost {
                match Connection::open(conn.target()) {
                    Ok(c) => *conn = c,
                    Err(e) => {
                        tracing::warn!("cannot reconnect to {host} for the cleanup tasks: {e}");
                        break;
                    }
                }
            }
            let result = match &task.items {
                None => task.execute(&env, &base, conn, vars, on_line),
                Some(items) => items.iter().try_for_each(|item| {
                    vars.insert("item".into(), Value::from(item.as_str()));
                    task.execute(&env, &base, conn, vars, on_line)
                }),
            };
            lost = matches!(result, Err(TaskError::Remote(RemoteError::Lost { .. })));
            match result {
                Ok(()) => {}
                Err(e) if task.ignore_errors && !matches!(e, TaskError::Remote(RemoteError::Interrupted)) => {
                    tracing::warn!("task '{}' failed, ignored: {e}", task.name);
                }
                Err(e) if failed.is_none() => failed = Some(wrap(e)),
                Err(e) => tracing::warn!("{}", wrap(e)),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn render(env: &Environment<'_>, s: &str, vars: &Vars) -> Result<String, TaskError> {
    env.render_str(s, vars).map_err(|e| TaskError::Template(format!("{s:?}: {e}")))
}

fn parse_mode(mode: Option<&str>) -> Result<Option<u32>, TaskError> {
    mode.map(|m| u32::from_str_radix(m, 8).map_err(|_| TaskError::Template(format!("mode {m:?} is not octal"))))
        .transpose()
}

impl Task {
    fn execute(
        &self,
        env: &Environment<'_>,
        base: &Path,
        conn: &Connection,
        vars: &mut Vars,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), TaskError> {
        if let Some(w) = &self.when {
            let expr = env.compile_expression(w).map_err(|e| TaskError::Template(e.to_string()))?;
            let go = expr.eval(&*vars).map_err(|e| TaskError::Template(format!("when {w:?}: {e}")))?;
            if !go.is_true() {
                tracing::debug!("skipped '{}' (when: {w})", self.name);
                if let Some(r) = &self.register {
                    vars.insert(r.clone(), Value::from(BTreeMap::from([("skipped".to_string(), Value::from(true))])));
                }
                return Ok(());
            }
        }
        let shown = render(env, &self.name, vars).unwrap_or_else(|_| self.name.clone());
        tracing::info!("{}", crate::run::redact(&shown));
        let local = |p: &str| base.join(p);
        match &self.action {
            Action::Run(script) => {
                let script = render(env, script, vars)?;
                let mut how = Exec {
                    become_root: self.become_root,
                    no_log: self.no_log,
                    on_line: None,
                    finish_when_cancelled: self.always,
                };
                if self.stream && !self.no_log {
                    how.on_line = Some(on_line);
                }
                let out = conn.exec(&script, &mut how)?;
                if let Some(r) = &self.register {
                    let m: BTreeMap<String, Value> = [
                        ("stdout", Value::from(out.stdout.trim_end_matches('\n'))),
                        ("stderr", Value::from(out.stderr.trim_end_matches('\n'))),
                        ("rc", Value::from(out.rc)),
                        ("failed", Value::from(out.rc != 0)),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    vars.insert(r.clone(), Value::from(m));
                }
                conn.check_exit(out, self.no_log)?;
            }
            Action::Copy(t) => {
                let src = local(&render(env, &t.src, vars)?);
                let dest = render(env, &t.dest, vars)?;
                conn.upload(&src, &dest, parse_mode(t.mode.as_deref())?, self.become_root)?;
            }
            Action::Fetch(t) => {
                let src = render(env, &t.src, vars)?;
                let dest = local(&render(env, &t.dest, vars)?);
                check_fetch_dest(&dest)?;
                let size = conn.download(&src, &dest, self.become_root)?;
                if let Some(r) = &self.register {
                    vars.insert(r.clone(), Value::from(BTreeMap::from([("size".to_string(), Value::from(size))])));
                }
            }
            Action::Template(t) => {
                let src = local(&render(env, &t.src, vars)?);
                let dest = render(env, &t.dest, vars)?;
                let text = std::fs::read_to_string(&src)
                    .map_err(|e| TaskError::Local(format!("{}: {e}", src.display())))?;
                let mut body = render(env, &text, vars)?;
                // minijinja drops a template's final newline.
                if text.ends_with('\n') && !body.ends_with('\n') {
                    body.push('\n');
                }
                let mut tmp = tempfile::NamedTempFile::new().map_err(|e| TaskError::Local(e.to_string()))?;
                std::io::Write::write_all(&mut tmp, body.as_bytes()).map_err(|e| TaskError::Local(e.to_string()))?;
                let mode = parse_mode(t.mode.as_deref())?.unwrap_or(0o644);
                conn.upload(tmp.path(), &dest, Some(mode), self.become_root)?;
            }
        }
        Ok(())
    }
}

/// Refuses a file name that is not one plain, visible component: a name
/// the remote side chose must not reach another directory or hide.
pub fn check_plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') || name.starts_with('.') || name.chars().any(char::is_control) {
        return Err(format!(
            "{name:?} is not a plain file name (no '/', no leading '.', no control characters)"
        ));
    }
    Ok(())
}

/// A fetch writes one plain file name into an existing directory, never
/// through `..` or a symlink (the name may come from the remote host).
fn check_fetch_dest(dest: &Path) -> Result<(), TaskError> {
    let refuse = |why: String| TaskError::Refused(format!("refusing to fetch into {}: {why}", dest.display().to_string().escape_debug()));
    if dest.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(refuse("the path climbs out with '..'".into()));
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    check_plain_name(&name).map_err(refuse)?;
    if dest.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(refuse("it is a symbolic link".into()));
    }
    Ok(())
}

/// Parses `--secret KEY=VALUE` pairs and registers their values for
/// redaction; values shorter than 4 characters cannot be redacted safely.
pub fn parse_secrets(pairs: &[String]) -> Result<Vars, String> {
    let vars = parse_vars(pairs)?;
    for (k, v) in &vars {
        let value = v.to_string();
        if value.len() < 4 {
            return Err(format!("{k}: a secret must be at least 4 characters to be redacted"));
        }
        crate::run::add_secret(value.clone());
        // Also as the `quote` filter writes it, for the debug log.
        crate::run::add_secret(super::ssh::quote(&value));
    }
    Ok(vars)
}

/// Parses `KEY=VALUE` pairs from the command line into variables.
pub fn parse_vars(pairs: &[String]) -> Result<Vars, String> {
    let mut vars = Vars::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("{p:?} is not KEY=VALUE"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{k:?} is not a variable name"));
        }
        vars.insert(k.to_string(), Value::from(v));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Playbook, PlaybookError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, text).unwrap();
        Playbook::load(&p)
    }

    #[test]
    fn tasks_need_exactly_one_action() {
        let e = load("- name: both\n  run: x\n  fetch: {src: a, dest: b}\n").unwrap_err().to_string();
        assert!(e.contains("task 'both': needs exactly one"), "{e}");
        let e = load("- name: none\n  become: true\n").unwrap_err().to_string();
        assert!(e.contains("needs exactly one"), "{e}");
        let e = load("- run: x\n  typo: 1\n").unwrap_err().to_string();
        assert!(e.contains("typo"), "{e}");
        assert!(load("[]").unwrap_err().to_string().contains("no tasks"));
    }

    #[test]
    fn templates_are_checked_at_load() {
        let e = load("- run: echo {{ x\n").unwrap_err().to_string();
        assert!(e.contains("task 'task 1'"), "{e}");
        let e = load("- run: x\n  when: a ==\n").unwrap_err().to_string();
        assert!(e.contains("when"), "{e}");
        let e = load("- copy: {src: a, dest: b, mode: rw}\n").unwrap_err().to_string();
        assert!(e.contains("not octal"), "{e}");
        let e = load("- run: x\n  register: a-b\n").unwrap_err().to_string();
        assert!(e.contains("not a variable name"), "{e}");
        let p = load("- run: echo {{ x | quote }}\n  register: out\n  when: y is defined\n").unwrap();
        assert_eq!(p.tasks.len(), 1);
    }

    #[test]
    fn rendering_is_strict_and_quotes() {
        let env = environment();
        let mut vars = Vars::new();
        vars.insert("x".into(), Value::from("it's $HOME"));
        assert_eq!(render(&env, "echo {{ x | quote }}", &vars).unwrap(), r"echo 'it'\''s $HOME'");
        let e = render(&env, "{{ missing }}", &vars).unwrap_err().to_string();
        assert!(e.contains("undefined"), "{e}");
    }

    #[test]
    fn fetch_destinations_stay_put() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for bad in ["../x.qcow2", "sub/../../x", ".hidden.qcow2", "a\nb.qcow2", ".."] {
            let e = check_fetch_dest(&d.join(bad)).unwrap_err();
            assert!(matches!(e, TaskError::Refused(_)) && !e.to_string().contains('\n'), "{bad:?}: {e}");
        }
        std::os::unix::fs::symlink("/etc/passwd", d.join("link.qcow2")).unwrap();
        assert!(check_fetch_dest(&d.join("link.qcow2")).unwrap_err().to_string().contains("symbolic link"));
        check_fetch_dest(&d.join("pg-15-dib-2026-11-24.qcow2")).unwrap();
        assert!(check_plain_name("x/y").is_err() && check_plain_name("").is_err());
    }

    #[test]
    fn cli_vars() {
        let v = parse_vars(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(v["b"].as_str(), Some("x=y"));
        assert!(parse_vars(&["novalue".into()]).is_err());
        assert!(parse_vars(&["a-b=1".into()]).is_err());
        assert!(parse_secrets(&["pw=abc".into()]).unwrap_err().contains("at least 4"));
        parse_secrets(&["pw=it's-long".into()]).unwrap();
        assert_eq!(crate::run::redact("echo 'it'\\''s-long' it's-long"), "echo *** ***");
    }
}
