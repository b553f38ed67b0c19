//! The normalized Windows inventory: what a `windows_inventory` run stores as its `payload`,
//! with names osquery users recognise. Every field a host may not report is optional: a
//! missing value is `null`, not an error. Sections that failed are named in `errors`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    /// The PowerShell collection script: every section.
    Powershell,
    /// The `reg query` fallback when PowerShell is missing or failed: `os` only.
    RegQuery,
}

/// One host's inventory at `collected_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    pub collected_at: DateTime<Utc>,
    pub source: InventorySource,
    pub os: OsInfo,
    pub system: SystemInfo,
    pub disks: Vec<Disk>,
    pub network_adapters: Vec<NetworkAdapter>,
    pub hotfixes: Vec<Hotfix>,
    pub software: Vec<Software>,
    /// Sections that could not be collected, each as `section: reason`.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OsInfo {
    /// `ProductName`, except that "Windows 10 …" with build ≥ 22000 is reported as
    /// "Windows 11 …" (Microsoft never updated the registry value); Server names are kept.
    pub name: Option<String>,
    /// `DisplayVersion` (e.g. `23H2`), or `ReleaseId` on builds that predate it.
    pub display_version: Option<String>,
    /// `CurrentBuild`.
    pub build: Option<String>,
    /// Update build revision (`UBR`).
    pub ubr: Option<i64>,
    /// `build.ubr`, e.g. `22631.4460`.
    pub full_build: Option<String>,
    /// `EditionID`, e.g. `Professional`, `ServerStandard`.
    pub edition: Option<String>,
    /// From the `InstallDate` DWORD (Unix seconds), in UTC.
    pub install_date: Option<DateTime<Utc>>,
    /// `64-bit`, `ARM 64-bit Processor`, …
    pub architecture: Option<String>,
    pub last_boot: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemInfo {
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub cpu: Option<String>,
    pub cores: Option<i64>,
    pub logical_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Drive letter, e.g. `C:`.
    pub device_id: Option<String>,
    pub label: Option<String>,
    pub file_system: Option<String>,
    pub size_bytes: Option<i64>,
    pub free_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkAdapter {
    pub description: Option<String>,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hotfix {
    /// e.g. `KB5032190`.
    pub id: String,
    pub description: Option<String>,
    /// ISO 8601 date, as the script formats it.
    pub installed_on: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Software {
    pub name: String,
    pub version: Option<String>,
    pub publisher: Option<String>,
    /// ISO 8601 date when the Uninstall key's `InstallDate` (`yyyymmdd`) is valid.
    pub install_date: Option<String>,
    /// `x64` (the 64-bit Uninstall key) or `x86` (`WOW6432Node`).
    pub arch: Option<String>,
}

/// What changed between two inventories of one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryDiff {
    pub software_added: Vec<Software>,
    pub software_removed: Vec<Software>,
    pub software_upgraded: Vec<SoftwareChange>,
    pub hotfixes_added: Vec<Hotfix>,
    pub hotfixes_removed: Vec<Hotfix>,
    /// Set when `os.full_build` (or `os.build`) differs.
    pub os_build_changed: Option<BuildChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SoftwareChange {
    pub name: String,
    pub arch: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildChange {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Inventory {
    /// Software is keyed by name and architecture; a key in both with another version is an
    /// upgrade (or downgrade: the versions are reported as found). Hotfixes are keyed by id.
    pub fn diff(&self, to: &Inventory) -> InventoryDiff {
        use std::collections::BTreeMap;
        let key = |s: &Software| (s.name.clone(), s.arch.clone());
        let before: BTreeMap<_, &Software> = self.software.iter().map(|s| (key(s), s)).collect();
        let after: BTreeMap<_, &Software> = to.software.iter().map(|s| (key(s), s)).collect();
        let mut diff = InventoryDiff::default();
        for (k, s) in &after {
            match before.get(k) {
                None => diff.software_added.push((*s).clone()),
                Some(old) if old.version != s.version => {
                    diff.software_upgraded.push(SoftwareChange {
                        name: s.name.clone(),
                        arch: s.arch.clone(),
                        from_version: old.version.clone(),
                        to_version: s.version.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        for (k, s) in &before {
            if !after.contains_key(k) {
                diff.software_removed.push((*s).clone());
            }
        }
        let had: std::collections::BTreeSet<&str> =
            self.hotfixes.iter().map(|h| h.id.as_str()).collect();
        let has: std::collections::BTreeSet<&str> =
            to.hotfixes.iter().map(|h| h.id.as_str()).collect();
        diff.hotfixes_added = to
            .hotfixes
            .iter()
            .filter(|h| !had.contains(h.id.as_str()))
            .cloned()
            .collect();
        diff.hotfixes_removed = self
            .hotfixes
            .iter()
            .filter(|h| !has.contains(h.id.as_str()))
            .cloned()
            .collect();
        let build = |i: &Inventory| i.os.full_build.clone().or_else(|| i.os.build.clone());
        if build(self) != build(to) {
            diff.os_build_changed = Some(BuildChange {
                from: build(self),
                to: build(to),
            });
        }
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(software: &[(&str, &str)], hotfixes: &[&str], build: &str) -> Inventory {
        Inventory {
            collected_at: Utc::now(),
            source: InventorySource::Powershell,
            os: OsInfo {
                full_build: Some(build.into()),
                ..OsInfo::default()
            },
            system: SystemInfo::default(),
            disks: vec![],
            network_adapters: vec![],
            hotfixes: hotfixes
                .iter()
                .map(|id| Hotfix {
                    id: (*id).into(),
                    ..Hotfix::default()
                })
                .collect(),
            software: software
                .iter()
                .map(|(n, v)| Software {
                    name: (*n).into(),
                    version: Some((*v).into()),
                    arch: Some("x64".into()),
                    ..Software::default()
                })
                .collect(),
            errors: vec![],
        }
    }

    #[test]
    fn diff_finds_added_removed_upgraded_and_build_changes() {
        let a = inventory(
            &[("7-Zip", "23.01"), ("Git", "2.44"), ("Old", "1")],
            &["KB1"],
            "22631.4460",
        );
        let b = inventory(
            &[("7-Zip", "24.08"), ("Git", "2.44"), ("New", "2")],
            &["KB1", "KB2"],
            "22631.4541",
        );
        let d = a.diff(&b);
        assert_eq!(
            d.software_added
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["New"]
        );
        assert_eq!(
            d.software_removed
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["Old"]
        );
        assert_eq!(d.software_upgraded.len(), 1);
        assert_eq!(d.software_upgraded[0].to_version.as_deref(), Some("24.08"));
        assert_eq!(
            d.hotfixes_added
                .iter()
                .map(|h| h.id.as_str())
                .collect::<Vec<_>>(),
            ["KB2"]
        );
        assert!(d.hotfixes_removed.is_empty());
        assert_eq!(
            d.os_build_changed.and_then(|c| c.to).as_deref(),
            Some("22631.4541")
        );
        assert_eq!(a.diff(&a), InventoryDiff::default());
    }
}
