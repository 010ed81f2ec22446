//! Reading `eplusout.err`: counts of warnings, severe and fatal errors, each error's text with
//! its `~~~` continuation lines, and whether EnergyPlus said it completed successfully.

/// How serious an `eplusout.err` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `** Warning **`
    Warning,
    /// `** Severe  **`
    Severe,
    /// `**  Fatal  **`
    Fatal,
}

/// One entry, its continuation lines joined with newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: String,
}

/// What `eplusout.err` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrReport {
    /// Every entry, in order.
    pub entries: Vec<Entry>,
    /// "EnergyPlus Completed Successfully" was there.
    pub completed_successfully: bool,
}

impl ErrReport {
    /// How many entries of `level`.
    pub fn count(&self, level: Level) -> u64 {
        self.entries.iter().filter(|e| e.level == level).count() as u64
    }
}

/// The (version, build) on the first line of `eplusout.err`
/// (`Program Version,EnergyPlus, Version 25.2.0-cf7368216c, YMD=…`).
pub fn program_version(text: &str) -> Option<(String, String)> {
    let line = text.lines().next()?;
    let version = line.split("Version ").nth(1)?.split([',', ' ']).next()?;
    let (version, build) = version.split_once('-').unwrap_or((version, ""));
    Some((version.to_owned(), build.to_owned()))
}

/// Parses the text of `eplusout.err`.
pub fn parse(text: &str) -> ErrReport {
    let mut report = ErrReport::default();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("**") else {
            continue;
        };
        if trimmed.starts_with("*************") {
            if trimmed.contains("EnergyPlus Completed Successfully") {
                report.completed_successfully = true;
            }
            continue;
        }
        let Some((tag, text)) = rest.split_once("**") else {
            continue;
        };
        let text = text.trim();
        let level = match tag.trim() {
            "Warning" => Level::Warning,
            "Severe" => Level::Severe,
            "Fatal" => Level::Fatal,
            "~~~" => {
                if let Some(last) = report.entries.last_mut() {
                    last.text.push('\n');
                    last.text.push_str(text);
                }
                continue;
            }
            _ => continue,
        };
        report.entries.push(Entry {
            level,
            text: text.to_owned(),
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_continuations_are_read() {
        let text = "Program Version,EnergyPlus, Version 25.2.0-cf7368216c, YMD=2026.12.02 06:56,\n\
   ** Warning ** GetHTSurfaceData: no \"Ground Temperatures\".\n\
   **   ~~~   ** Found first in surface=FLOOR\n\
   ** Severe  ** Node Connection Error, Node=\"X\", ZoneHVAC not found.\n\
   **  Fatal  ** Errors occurred on processing input file. Preceding condition(s) cause termination.\n\
   ...Summary of Errors that led to program termination:\n\
   ************* EnergyPlus Terminated--Fatal Error Detected. 1 Warning; 1 Severe Errors;\n";
        let report = parse(text);
        assert_eq!(report.count(Level::Warning), 1);
        assert_eq!(report.count(Level::Severe), 1);
        assert_eq!(report.count(Level::Fatal), 1);
        assert_eq!(
            report.entries[0].text,
            "GetHTSurfaceData: no \"Ground Temperatures\".\nFound first in surface=FLOOR"
        );
        assert!(!report.completed_successfully);
        assert_eq!(
            program_version(text),
            Some(("25.2.0".to_owned(), "cf7368216c".to_owned()))
        );
        assert!(
            parse(
                "   ************* EnergyPlus Completed Successfully-- 1 Warning; 0 Severe Errors;"
            )
            .completed_successfully
        );
    }
}
