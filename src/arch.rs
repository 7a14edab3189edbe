//! Target CPU architectures and their names in the tools we drive.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CPU architecture an image can be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64, booted with GRUB for BIOS.
    Amd64,
    /// 64-bit little-endian POWER, booted with GRUB for IEEE 1275.
    Ppc64le,
}

impl Arch {
    /// The architecture this program runs on, if it is one we build for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "powerpc64" if cfg!(target_endian = "little") => Some(Arch::Ppc64le),
            _ => None,
        }
    }

    /// Debian's name (`dpkg --print-architecture`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Ppc64le => "ppc64el",
        }
    }

    /// The kernel's name (`uname -m`), also used by DIB's `ARCH` variable.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Ppc64le => "ppc64le",
        }
    }

    /// Our own name, as the user types it on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Ppc64le => "ppc64le",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "ppc64le" | "ppc64el" => Ok(Arch::Ppc64le),
            other => Err(format!(
                "unknown architecture '{other}': use amd64 or ppc64le"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!("ppc64el".parse::<Arch>().unwrap(), Arch::Ppc64le);
        assert!("arm64".parse::<Arch>().unwrap_err().contains("amd64 or ppc64le"));
    }

    #[test]
    fn names_match_the_tools() {
        assert_eq!(Arch::Ppc64le.debian(), "ppc64el");
        assert_eq!(Arch::Ppc64le.uname(), "ppc64le");
        assert_eq!(Arch::Amd64.uname(), "x86_64");
    }
}
