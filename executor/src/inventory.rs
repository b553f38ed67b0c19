//! Agentless Windows inventory: the PowerShell collection command, the `reg query` fallback,
//! and the parsers that turn either answer into a normalized [`Inventory`].
//!
//! The script prints one JSON document in a raw shape of its own (Windows' names); the
//! normalization rules live here, in Rust, where they are unit-tested, not in PowerShell.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use netcron_common::inventory::{
    Disk, Hotfix, Inventory, InventorySource, NetworkAdapter, OsInfo, Software, SystemInfo,
};
use serde_json::Value;

/// The collection script. Kept short: cmd.exe (the default shell of Windows OpenSSH) limits a
/// command line to 8191 characters, and the encoded form is about 2.7 times the script.
/// Each section runs in `S`, which records a failure in `errors` and goes on; dates are
/// formatted here, because ConvertTo-Json writes them differently in PowerShell 5.1 and 7;
/// `@()` and `-InputObject` keep one-element arrays arrays.
const SCRIPT: &str = r#"$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
[Console]::OutputEncoding=[Text.Encoding]::UTF8
$e=@();function S($n,$b){try{&$b}catch{$script:e+="${n}: $($_.Exception.Message)"}}
function D($d){if($d){([datetime]$d).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')}}
$os=S 'os' {$r=Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion';$w=Get-CimInstance Win32_OperatingSystem;@{ProductName=$r.ProductName;DisplayVersion=$r.DisplayVersion;ReleaseId=$r.ReleaseId;CurrentBuild=$r.CurrentBuild;UBR=$r.UBR;EditionID=$r.EditionID;InstallDate=$r.InstallDate;Architecture=$w.OSArchitecture;LastBoot=(D $w.LastBootUpTime)}}
$sy=S 'system' {$c=Get-CimInstance Win32_ComputerSystem;$p=@(Get-CimInstance Win32_Processor);@{Hostname=$env:COMPUTERNAME;Domain=$c.Domain;Manufacturer=$c.Manufacturer;Model=$c.Model;Serial=(Get-CimInstance Win32_BIOS).SerialNumber;Cpu=$p[0].Name;Cores=($p|Measure-Object NumberOfCores -Sum).Sum;LogicalCpus=$c.NumberOfLogicalProcessors;MemoryBytes=$c.TotalPhysicalMemory}}
$di=S 'disks' {Get-CimInstance Win32_LogicalDisk -Filter 'DriveType=3'|%{@{DeviceID=$_.DeviceID;VolumeName=$_.VolumeName;FileSystem=$_.FileSystem;Size=$_.Size;FreeSpace=$_.FreeSpace}}}
$na=S 'network_adapters' {Get-CimInstance Win32_NetworkAdapterConfiguration -Filter 'IPEnabled=True'|%{@{Description=$_.Description;MACAddress=$_.MACAddress;IPAddress=@($_.IPAddress)}}}
$hf=S 'hotfixes' {Get-CimInstance Win32_QuickFixEngineering|%{@{HotFixID=$_.HotFixID;Description=$_.Description;InstalledOn=(D $_.InstalledOn)}}}
$sw=S 'software' {foreach($a in @(@('x64','HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*'),@('x86','HKLM:\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall\*'))){Get-ItemProperty $a[1] -EA SilentlyContinue|?{$_.DisplayName}|%{@{DisplayName=$_.DisplayName;DisplayVersion=$_.DisplayVersion;Publisher=$_.Publisher;InstallDate=$_.InstallDate;Arch=$a[0]}}}}
ConvertTo-Json -Depth 4 -Compress -InputObject @{os=$os;system=$sy;disks=@($di);network_adapters=@($na);hotfixes=@($hf);software=@($sw);errors=@($e)}"#;

/// The prefix of the PowerShell command; the base64 of the UTF-16LE script follows.
pub const POWERSHELL_PREFIX: &str = "powershell.exe -NoProfile -NonInteractive -EncodedCommand ";

/// The fallback when PowerShell is missing or fails.
pub const REG_QUERY: &str = r#"reg query "HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion""#;

/// `powershell.exe … -EncodedCommand <base64 of the UTF-16LE script>`: runs the same under
/// cmd.exe and PowerShell as the default SSH shell, with no quoting to get wrong.
pub fn powershell_command() -> String {
    let utf16: Vec<u8> = SCRIPT.encode_utf16().flat_map(u16::to_le_bytes).collect();
    format!("{POWERSHELL_PREFIX}{}", STANDARD.encode(utf16))
}

/// Parses the script's JSON (PowerShell 5.1 or 7 formatting, CRLF, a UTF-8 BOM).
///
/// It is long because it is one table: each section of the document read into its normalized
/// type, field by field, in the script's order.
///
/// # Errors
/// When the output is not the script's JSON document; the text says what was wrong.
pub fn parse_powershell(stdout: &str, collected_at: DateTime<Utc>) -> Result<Inventory, String> {
    let text = stdout.trim_start_matches('\u{feff}').trim();
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "the inventory script's output is not JSON ({e}); it began with {:?}",
            text.chars().take(80).collect::<String>()
        )
    })?;
    if !doc.is_object() || doc.get("os").is_none() {
        return Err("the inventory script's output has no `os` section".into());
    }
    let os = doc.get("os").filter(|v| v.is_object());
    let os = match os {
        Some(o) => normalize_os(&RawOs {
            product_name: text_of(o, "ProductName"),
            display_version: text_of(o, "DisplayVersion"),
            release_id: text_of(o, "ReleaseId"),
            build: text_of(o, "CurrentBuild"),
            ubr: int_of(o, "UBR"),
            edition: text_of(o, "EditionID"),
            install_date: int_of(o, "InstallDate"),
            architecture: text_of(o, "Architecture"),
            last_boot: text_of(o, "LastBoot").and_then(|t| parse_time(&t)),
        }),
        None => OsInfo::default(),
    };
    let system = doc
        .get("system")
        .filter(|v| v.is_object())
        .map(|s| SystemInfo {
            hostname: text_of(s, "Hostname"),
            domain: text_of(s, "Domain"),
            manufacturer: text_of(s, "Manufacturer"),
            model: text_of(s, "Model"),
            serial: text_of(s, "Serial"),
            cpu: text_of(s, "Cpu"),
            cores: int_of(s, "Cores"),
            logical_cpus: int_of(s, "LogicalCpus"),
            memory_bytes: int_of(s, "MemoryBytes"),
        })
        .unwrap_or_default();
    let disks = list_of(&doc, "disks")
        .map(|d| Disk {
            device_id: text_of(d, "DeviceID"),
            label: text_of(d, "VolumeName"),
            file_system: text_of(d, "FileSystem"),
            size_bytes: int_of(d, "Size"),
            free_bytes: int_of(d, "FreeSpace"),
        })
        .collect();
    let network_adapters = list_of(&doc, "network_adapters")
        .map(|n| NetworkAdapter {
            description: text_of(n, "Description"),
            mac: text_of(n, "MACAddress"),
            addresses: list_of(n, "IPAddress")
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        })
        .collect();
    let hotfixes = list_of(&doc, "hotfixes")
        .filter_map(|h| {
            Some(Hotfix {
                id: text_of(h, "HotFixID")?,
                description: text_of(h, "Description"),
                installed_on: text_of(h, "InstalledOn"),
            })
        })
        .collect();
    let software = list_of(&doc, "software")
        .filter_map(|s| {
            Some(Software {
                name: text_of(s, "DisplayName")?,
                version: text_of(s, "DisplayVersion"),
                publisher: text_of(s, "Publisher"),
                install_date: text_of(s, "InstallDate").and_then(|d| yyyymmdd(&d)),
                arch: text_of(s, "Arch"),
            })
        })
        .collect();
    let errors = list_of(&doc, "errors")
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    Ok(Inventory {
        collected_at,
        source: InventorySource::Powershell,
        os,
        system,
        disks,
        network_adapters,
        hotfixes,
        software,
        errors,
    })
}

/// Parses `reg query "HKLM\…\CurrentVersion"` text: a blank first line, the key path at
/// column 0, then values indented four spaces as `Name    REG_TYPE    Data`. Names and data
/// may contain spaces, so a line is split around its `REG_*` token; a value with no data has
/// no third column; REG_DWORD data is `0x` hex. The default value's name is localized
/// (`(Default)`, `(Standard)`, `(Par défaut)`…) and is skipped. Subkeys (further lines at
/// column 0) end the values of the key.
///
/// # Errors
/// When the text has no value line at all, or no `CurrentBuild`/`ProductName`.
pub fn parse_reg_query(
    stdout: &str,
    collected_at: DateTime<Utc>,
    errors: Vec<String>,
) -> Result<Inventory, String> {
    let mut values = std::collections::HashMap::new();
    let mut keys_seen = 0;
    for line in stdout.trim_start_matches('\u{feff}').lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            keys_seen += 1;
            continue;
        }
        if keys_seen > 1 {
            break;
        }
        let Some((name, kind, data)) = split_value(line.trim_start()) else {
            continue;
        };
        if name.starts_with('(') && name.ends_with(')') {
            continue;
        }
        let value = match kind {
            "REG_DWORD" | "REG_QWORD" => data
                .strip_prefix("0x")
                .and_then(|h| i64::from_str_radix(h, 16).ok())
                .map(RegValue::Int),
            _ => Some(RegValue::Text(data.to_owned())).filter(|_| !data.is_empty()),
        };
        if let Some(value) = value {
            values.insert(name.to_owned(), value);
        }
    }
    if values.is_empty() {
        return Err(format!(
            "the reg query output has no values; it began with {:?}",
            stdout.chars().take(80).collect::<String>()
        ));
    }
    let text = |k: &str| match values.get(k) {
        Some(RegValue::Text(t)) => Some(t.clone()),
        Some(RegValue::Int(i)) => Some(i.to_string()),
        None => None,
    };
    let int = |k: &str| match values.get(k) {
        Some(RegValue::Int(i)) => Some(*i),
        Some(RegValue::Text(t)) => t.parse().ok(),
        None => None,
    };
    let build = text("CurrentBuild").or_else(|| text("CurrentBuildNumber"));
    if build.is_none() && text("ProductName").is_none() {
        return Err("the reg query output has neither CurrentBuild nor ProductName".into());
    }
    let os = normalize_os(&RawOs {
        product_name: text("ProductName"),
        display_version: text("DisplayVersion"),
        release_id: text("ReleaseId"),
        build,
        ubr: int("UBR"),
        edition: text("EditionID"),
        install_date: int("InstallDate"),
        architecture: None,
        last_boot: None,
    });
    Ok(Inventory {
        collected_at,
        source: InventorySource::RegQuery,
        os,
        system: SystemInfo::default(),
        disks: vec![],
        network_adapters: vec![],
        hotfixes: vec![],
        software: vec![],
        errors,
    })
}

enum RegValue {
    Text(String),
    Int(i64),
}

/// `Name    REG_TYPE    Data` → (name, type, data); data may be absent. Cuts are made only
/// through `match_indices`, `get` and `split_at_checked`, so no text can make it panic.
pub(crate) fn split_value(line: &str) -> Option<(&str, &str, &str)> {
    const GAP: &str = "    ";
    line.match_indices("    REG_").find_map(|(at, _)| {
        let name = line.get(..at)?;
        let rest = line.get(at + GAP.len()..)?;
        let len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let (kind, after) = rest.split_at_checked(len)?;
        (kind.len() > "REG_".len() && (after.is_empty() || after.starts_with(GAP)))
            .then(|| (name.trim_end(), kind, after.trim()))
    })
}

struct RawOs {
    product_name: Option<String>,
    display_version: Option<String>,
    release_id: Option<String>,
    build: Option<String>,
    ubr: Option<i64>,
    edition: Option<String>,
    install_date: Option<i64>,
    architecture: Option<String>,
    last_boot: Option<DateTime<Utc>>,
}

/// The naming rules: Windows 11 still says "Windows 10" in `ProductName`, so a client build
/// ≥ 22000 is renamed (Server names never are); `DisplayVersion` falls back to `ReleaseId`.
fn normalize_os(raw: &RawOs) -> OsInfo {
    let build_number: Option<u32> = raw.build.as_deref().and_then(|b| b.trim().parse().ok());
    let name = raw.product_name.clone().map(|name| {
        match (name.strip_prefix("Windows 10"), build_number) {
            (Some(rest), Some(b)) if b >= 22000 && !name.contains("Server") => {
                format!("Windows 11{rest}")
            }
            _ => name,
        }
    });
    OsInfo {
        name,
        display_version: raw
            .display_version
            .clone()
            .or_else(|| raw.release_id.clone()),
        build: raw.build.clone(),
        ubr: raw.ubr,
        full_build: match (&raw.build, raw.ubr) {
            (Some(b), Some(u)) => Some(format!("{b}.{u}")),
            (Some(b), None) => Some(b.clone()),
            _ => None,
        },
        edition: raw.edition.clone(),
        install_date: raw
            .install_date
            .filter(|s| *s > 0)
            .and_then(|s| Utc.timestamp_opt(s, 0).single()),
        architecture: raw.architecture.clone(),
        last_boot: raw.last_boot,
    }
}

/// A string, or a number written as text; empty strings are absent.
fn text_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a numeric string (PowerShell 5.1 writes some UInt64 values as strings).
fn int_of(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The elements of an array, a lone object as one element (what ConvertTo-Json makes of a
/// one-element array when it was not protected), nothing for null; nulls are skipped.
fn list_of<'a>(v: &'a Value, key: &str) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
    match v.get(key) {
        Some(Value::Array(items)) => Box::new(items.iter().filter(|i| !i.is_null())),
        Some(Value::Null) | None => Box::new(std::iter::empty()),
        Some(other) => Box::new(std::iter::once(other)),
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `20261101` → `2026-11-01`; anything else is dropped.
fn yyyymmdd(text: &str) -> Option<String> {
    NaiveDate::parse_from_str(text.trim(), "%Y%m%d")
        .ok()
        .map(|d| d.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn the_encoded_command_fits_a_cmd_exe_command_line_and_decodes_to_the_script() {
        let cmd = powershell_command();
        assert!(cmd.len() < 8191, "{} characters", cmd.len());
        let b64 = cmd.strip_prefix(POWERSHELL_PREFIX).expect("prefix");
        let bytes = STANDARD.decode(b64).expect("base64");
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).expect("utf-16"), SCRIPT);
    }

    #[test]
    fn powershell_7_output_is_normalized() {
        let inv =
            parse_powershell(include_str!("../fixtures/ps7-win11.json"), at()).expect("parses");
        assert_eq!(inv.source, InventorySource::Powershell);
        assert_eq!(inv.os.name.as_deref(), Some("Windows 11 Pro"));
        assert_eq!(inv.os.display_version.as_deref(), Some("23H2"));
        assert_eq!(inv.os.full_build.as_deref(), Some("22631.4460"));
        assert_eq!(inv.os.edition.as_deref(), Some("Professional"));
        assert_eq!(
            inv.os.install_date.map(|d| d.to_rfc3339()),
            Some("2023-11-14T22:13:20+00:00".into())
        );
        assert_eq!(inv.system.hostname.as_deref(), Some("WS-0042"));
        assert_eq!(inv.system.memory_bytes, Some(34_359_738_368));
        assert_eq!(inv.disks.len(), 2);
        assert_eq!(inv.network_adapters[0].addresses.len(), 2);
        assert_eq!(inv.hotfixes.len(), 2);
        assert_eq!(inv.software.len(), 3);
        assert_eq!(inv.software[0].install_date.as_deref(), Some("2024-05-02"));
        assert!(inv.errors.is_empty());
    }

    #[test]
    fn powershell_5_1_output_with_crlf_bom_lone_objects_and_a_failed_section() {
        let inv = parse_powershell(include_str!("../fixtures/ps51-server2022.json"), at())
            .expect("parses");
        assert_eq!(inv.os.name.as_deref(), Some("Windows Server 2022 Standard"));
        assert_eq!(inv.os.display_version.as_deref(), Some("21H2"));
        assert_eq!(inv.os.full_build.as_deref(), Some("20348.2849"));
        // One disk and one hotfix came as lone objects, not arrays.
        assert_eq!(inv.disks.len(), 1);
        assert_eq!(inv.hotfixes.len(), 1);
        assert_eq!(inv.system.cores, Some(4));
        assert_eq!(inv.software.len(), 0);
        assert_eq!(inv.errors, ["software: Access is denied."]);
    }

    #[test]
    fn reg_query_output_is_parsed_around_its_reg_tokens() {
        let inv = parse_reg_query(
            include_str!("../fixtures/reg-query-win10.txt"),
            at(),
            vec!["powershell: not found".into()],
        )
        .expect("parses");
        assert_eq!(inv.source, InventorySource::RegQuery);
        assert_eq!(
            inv.os.name.as_deref(),
            Some("Windows 10 Enterprise LTSC 2021")
        );
        // No DisplayVersion on this build: ReleaseId stands in.
        assert_eq!(inv.os.display_version.as_deref(), Some("2009"));
        assert_eq!(inv.os.build.as_deref(), Some("19044"));
        assert_eq!(inv.os.ubr, Some(5131));
        assert_eq!(inv.os.full_build.as_deref(), Some("19044.5131"));
        assert_eq!(inv.os.edition.as_deref(), Some("EnterpriseS"));
        assert_eq!(
            inv.os.install_date.map(|d| d.to_rfc3339()),
            Some("2022-03-08T09:46:40+00:00".into())
        );
        assert_eq!(inv.errors, ["powershell: not found"]);
    }

    #[test]
    fn reg_query_windows_11_and_localized_default_value() {
        let inv = parse_reg_query(
            include_str!("../fixtures/reg-query-win11-de.txt"),
            at(),
            vec![],
        )
        .expect("parses");
        assert_eq!(inv.os.name.as_deref(), Some("Windows 11 Pro"));
        assert_eq!(inv.os.display_version.as_deref(), Some("24H2"));
        assert_eq!(inv.os.full_build.as_deref(), Some("26100.2314"));
    }

    #[test]
    fn split_value_handles_spaces_in_names_and_data_and_missing_data() {
        assert_eq!(
            split_value("Product Name    REG_SZ    Windows 10 Pro"),
            Some(("Product Name", "REG_SZ", "Windows 10 Pro"))
        );
        assert_eq!(
            split_value("Empty    REG_SZ"),
            Some(("Empty", "REG_SZ", ""))
        );
        assert_eq!(
            split_value("UBR    REG_DWORD    0x140b"),
            Some(("UBR", "REG_DWORD", "0x140b"))
        );
        assert_eq!(split_value("not a value"), None);
    }

    #[test]
    fn garbage_is_an_error_not_an_inventory() {
        assert!(parse_powershell("Access denied\r\n", at()).is_err());
        assert!(parse_powershell("[1,2,3]", at()).is_err());
        assert!(
            parse_reg_query(
                "ERROR: The system was unable to find the specified registry key or value.\r\n",
                at(),
                vec![]
            )
            .is_err()
        );
    }
}
