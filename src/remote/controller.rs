//! What a guest image needs from the Trove controller: the guest agent
//! configuration Trove's task manager hands to guests, and optionally a
//! public key of the controller, read over SSH by `playbooks/controller.yaml`.

use minijinja::Value;

use super::playbook::{Playbook, Vars};
use super::ssh::Connection;
use crate::settings::Settings;

/// The playbook's file name under `playbooks/`.
const PLAYBOOK: &str = "controller.yaml";

/// Values read from the controller.
#[derive(Clone, Default)]
pub struct Metadata {
    /// The guest agent configuration file's text (holds credentials).
    pub guest_agent_conf: String,
    /// The controller's public key, when the settings name one.
    pub public_key: Option<String>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("guest_agent_conf", &format_args!("({} bytes, hidden)", self.guest_agent_conf.len()))
            .field("public_key", &self.public_key)
            .finish()
    }
}

/// Reads the metadata when the settings name a controller; `None` otherwise.
pub fn fetch(settings: &Settings) -> anyhow::Result<Option<Metadata>> {
    let Some(ctl) = &settings.controller else {
        return Ok(None);
    };
    let target = super::resolve_target("controller", settings)?;
    let playbook = Playbook::load(&settings.data_dir.join("playbooks").join(PLAYBOOK))?;
    let mut conn = Connection::open(&target)?;
    let mut vars = Vars::new();
    vars.insert("guest_agent_conf".into(), Value::from(ctl.guest_agent_conf.as_str()));
    if let Some(k) = &ctl.public_key {
        vars.insert("public_key".into(), Value::from(k.as_str()));
    }
    playbook.run(&mut conn, &mut vars, &mut |_| {})?;
    conn.close();
    let conf = registered(&vars, "guest_agent").unwrap_or_default();
    if conf.trim().is_empty() {
        anyhow::bail!(
            "{} on the controller {target} is empty; set controller.guest_agent_conf to Trove's guest agent configuration",
            ctl.guest_agent_conf
        );
    }
    let public_key = registered(&vars, "controller_key").map(|k| k.trim().to_string());
    if let Some(k) = &public_key
        && crate::build::plan::read_key(k).is_err()
    {
        anyhow::bail!(
            "{} on the controller {target} is not an OpenSSH public key; fix controller.public_key",
            ctl.public_key.as_deref().unwrap_or_default()
        );
    }
    tracing::info!(
        "read the guest agent configuration ({} bytes){} from the controller {target}",
        conf.len(),
        if public_key.is_some() { " and its public key" } else { "" }
    );
    Ok(Some(Metadata { guest_agent_conf: conf, public_key }))
}

fn registered(vars: &Vars, name: &str) -> Option<String> {
    let v = vars.get(name)?.get_attr("stdout").ok()?;
    v.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_debug_hides_the_config() {
        let m = Metadata { guest_agent_conf: "password = x".into(), public_key: None };
        assert!(!format!("{m:?}").contains("password"));
    }
}
