//! The EnergyPlus model as the runner prepares it: read (IDF or epJSON), checked for objects
//! that would run code or read files outside the job, and written back as a working copy with
//! the envelope's settings applied and `Output:SQLite, SimpleAndTabular` present exactly once
//! (the metrics are read from `eplusout.sql`).
//!
//! The IDF reader knows only the grammar EnergyPlus does: objects end at `;`, fields are
//! separated by `,`, and `!` starts a comment to the end of the line. The working copy is
//! written without the comments.

use anyhow::{Context, bail};
use runway_contract::energyplus::EnergyPlusInputs;
use serde_json::{Map, Value, json};

/// Which syntax the model is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Text IDF.
    Idf,
    /// epJSON.
    EpJson,
}

impl Syntax {
    /// The working copy's file name.
    pub fn working_name(self) -> &'static str {
        match self {
            Self::Idf => "in.idf",
            Self::EpJson => "in.epJSON",
        }
    }
}

/// One IDF object: its class and its fields (trimmed; the class is not a field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdfObject {
    /// The class (`Zone`, `Schedule:File`), as written.
    pub class: String,
    /// The fields after the class.
    pub fields: Vec<String>,
}

/// Parses IDF text into objects. Text after the last `;` that is not a comment is an error.
pub fn parse_idf(text: &str) -> anyhow::Result<Vec<IdfObject>> {
    let mut objects = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let code = line.split('!').next().unwrap_or("");
        for ch in code.chars() {
            if ch == ';' {
                let mut parts = current.split(',').map(|f| f.trim().to_owned());
                let class = parts.next().unwrap_or_default();
                if class.is_empty() {
                    bail!("the IDF has an object without a class before a ';'");
                }
                objects.push(IdfObject {
                    class,
                    fields: parts.collect(),
                });
                current.clear();
            } else {
                current.push(ch);
            }
        }
        current.push(' ');
    }
    if !current.trim().is_empty() {
        bail!(
            "the IDF ends inside an object (missing ';' after {:?})",
            current.trim().chars().take(60).collect::<String>()
        );
    }
    Ok(objects)
}

/// A model object Runway refuses to run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The object's class.
    pub class: String,
    /// Its name, when it has one.
    pub name: Option<String>,
    /// Why it is refused.
    pub reason: &'static str,
}

impl Refusal {
    /// One sentence naming the object.
    pub fn sentence(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "The model contains {} \"{name}\", which {}; it is refused.",
                self.class, self.reason
            ),
            None => format!(
                "The model contains {}, which {}; it is refused.",
                self.class, self.reason
            ),
        }
    }
}

/// Why an object of `class` is refused, if it is (case-insensitive, as EnergyPlus reads it).
fn unsafe_class(class: &str) -> Option<&'static str> {
    let lower = class.to_ascii_lowercase();
    if lower.starts_with("pythonplugin:") {
        Some("runs Python code inside EnergyPlus")
    } else if lower.starts_with("externalinterface") {
        Some("couples EnergyPlus to an external program")
    } else if lower == "energymanagementsystem:program"
        || lower == "energymanagementsystem:subroutine"
    {
        Some("runs an EnergyManagementSystem program")
    } else {
        None
    }
}

/// Why a `Schedule:File` file name is refused, if it is: absolute, remote, or leaving the
/// model's folder.
fn unsafe_schedule_path(path: &str) -> Option<&'static str> {
    let p = path.trim();
    let bytes = p.as_bytes();
    if p.contains("://") {
        Some("reads a remote file")
    } else if p.starts_with(['/', '\\', '~'])
        || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
    {
        Some("reads a file by absolute path")
    } else if p.split(['/', '\\']).any(|segment| segment == "..") {
        Some("reads a file outside the model's folder")
    } else {
        None
    }
}

/// A prepared working copy.
#[derive(Debug)]
pub struct Prepared {
    /// The working copy's bytes.
    pub text: Vec<u8>,
    /// The model's declared `Version`, if any.
    pub version: Option<String>,
}

/// Checks the model and builds its working copy with `inputs` applied.
pub fn prepare(
    syntax: Syntax,
    bytes: &[u8],
    inputs: &EnergyPlusInputs,
) -> anyhow::Result<Result<Prepared, Refusal>> {
    match syntax {
        Syntax::Idf => {
            let text = std::str::from_utf8(bytes).context("the IDF is not UTF-8 text")?;
            prepare_idf(&parse_idf(text)?, inputs)
        }
        Syntax::EpJson => {
            let model: Map<String, Value> =
                serde_json::from_slice(bytes).context("the epJSON model is not a JSON object")?;
            prepare_epjson(model, inputs)
        }
    }
}

fn prepare_idf(
    objects: &[IdfObject],
    inputs: &EnergyPlusInputs,
) -> anyhow::Result<Result<Prepared, Refusal>> {
    let mut version = None;
    for object in objects {
        let name = object.fields.first().filter(|n| !n.is_empty()).cloned();
        if let Some(reason) = unsafe_class(&object.class) {
            return Ok(Err(Refusal {
                class: object.class.clone(),
                name,
                reason,
            }));
        }
        if object.class.eq_ignore_ascii_case("Schedule:File")
            && let Some(reason) = object.fields.get(2).and_then(|p| unsafe_schedule_path(p))
        {
            return Ok(Err(Refusal {
                class: object.class.clone(),
                name,
                reason,
            }));
        }
        if object.class.eq_ignore_ascii_case("Version") {
            version = object.fields.first().cloned();
        }
    }
    let mut out = Vec::with_capacity(objects.len());
    let mut has_timestep = false;
    for object in objects {
        let class = object.class.to_ascii_lowercase();
        if class == "output:sqlite" {
            continue;
        }
        let mut object = object.clone();
        if class == "timestep" {
            has_timestep = true;
            object.fields = vec![inputs.timestep_per_hour.get().to_string()];
        }
        if class == "runperiod"
            && let Some(days) = inputs.run_period_days
        {
            shorten_idf_run_period(&mut object, days)?;
        }
        out.push(object);
    }
    if !has_timestep {
        out.push(IdfObject {
            class: "Timestep".into(),
            fields: vec![inputs.timestep_per_hour.get().to_string()],
        });
    }
    out.push(IdfObject {
        class: "Output:SQLite".into(),
        fields: vec!["SimpleAndTabular".into()],
    });
    let mut text = String::new();
    for object in &out {
        text.push_str(&object.class);
        for field in &object.fields {
            text.push_str(",\n    ");
            text.push_str(field);
        }
        text.push_str(";\n\n");
    }
    Ok(Ok(Prepared {
        text: text.into_bytes(),
        version,
    }))
}

/// The (month, day) `days - 1` days after (`month`, `day`) in a non-leap year, capped at
/// December 31.
fn end_of_period(month: u32, day: u32, days: i64) -> anyhow::Result<(u32, u32)> {
    if days < 1 {
        bail!("run_period_days must be at least 1, got {days}");
    }
    let start = chrono::NaiveDate::from_ymd_opt(2025, month, day)
        .with_context(|| format!("the run period starts on an invalid date {month}/{day}"))?;
    let last = chrono::NaiveDate::from_ymd_opt(2025, 12, 31).expect("a valid date");
    let end = start
        .checked_add_days(chrono::Days::new(u64::try_from(days - 1).unwrap_or(0)))
        .map_or(last, |d| d.min(last));
    use chrono::Datelike;
    Ok((end.month(), end.day()))
}

fn shorten_idf_run_period(object: &mut IdfObject, days: i64) -> anyhow::Result<()> {
    // RunPeriod: Name, Begin Month, Begin Day of Month, Begin Year, End Month, End Day, ...
    let field = |i: usize| object.fields.get(i).and_then(|f| f.parse::<u32>().ok());
    let (month, day) = (field(1).unwrap_or(1), field(2).unwrap_or(1));
    let (end_month, end_day) = end_of_period(month, day, days)?;
    if object.fields.len() < 6 {
        object.fields.resize(6, String::new());
    }
    object.fields[4] = end_month.to_string();
    object.fields[5] = end_day.to_string();
    Ok(())
}

fn prepare_epjson(
    mut model: Map<String, Value>,
    inputs: &EnergyPlusInputs,
) -> anyhow::Result<Result<Prepared, Refusal>> {
    for (class, objects) in &model {
        let first_name = || objects.as_object().and_then(|o| o.keys().next().cloned());
        if let Some(reason) = unsafe_class(class) {
            return Ok(Err(Refusal {
                class: class.clone(),
                name: first_name(),
                reason,
            }));
        }
        if class.eq_ignore_ascii_case("Schedule:File")
            && let Some(objects) = objects.as_object()
        {
            for (name, object) in objects {
                if let Some(reason) = object
                    .get("file_name")
                    .and_then(Value::as_str)
                    .and_then(unsafe_schedule_path)
                {
                    return Ok(Err(Refusal {
                        class: class.clone(),
                        name: Some(name.clone()),
                        reason,
                    }));
                }
            }
        }
    }
    let version = model
        .get("Version")
        .and_then(Value::as_object)
        .and_then(|o| o.values().next())
        .and_then(|v| v.get("version_identifier"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    model.retain(|class, _| !class.eq_ignore_ascii_case("Output:SQLite"));
    model.insert(
        "Output:SQLite".into(),
        json!({"Output:SQLite 1": {"option_type": "SimpleAndTabular"}}),
    );
    model.insert(
        "Timestep".into(),
        json!({"Timestep 1": {"number_of_timesteps_per_hour": inputs.timestep_per_hour.get()}}),
    );
    if let Some(days) = inputs.run_period_days
        && let Some(periods) = model.get_mut("RunPeriod").and_then(Value::as_object_mut)
    {
        for period in periods.values_mut().filter_map(Value::as_object_mut) {
            let get = |k: &str| period.get(k).and_then(Value::as_u64).map(|v| v as u32);
            let (month, day) = (
                get("begin_month").unwrap_or(1),
                get("begin_day_of_month").unwrap_or(1),
            );
            let (end_month, end_day) = end_of_period(month, day, days)?;
            period.insert("end_month".into(), json!(end_month));
            period.insert("end_day_of_month".into(), json!(end_day));
        }
    }
    Ok(Ok(Prepared {
        text: serde_json::to_vec_pretty(&model)?,
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "Version, 25.2;  ! a comment; with a semicolon\nTimestep,6;\n\
        RunPeriod, Annual, 1, 1, , 12, 31, , Sunday, Yes, Yes, No, Yes, Yes;\n\
        Output:SQLite, Simple;\noutput:sqlite,SimpleAndTabular;\n";

    fn idf(text: &str, inputs: &EnergyPlusInputs) -> Result<String, Refusal> {
        prepare(Syntax::Idf, text.as_bytes(), inputs)
            .unwrap()
            .map(|p| String::from_utf8(p.text).unwrap())
    }

    #[test]
    fn the_working_copy_has_sqlite_output_exactly_once() {
        let out = idf(MODEL, &EnergyPlusInputs::default()).unwrap();
        assert_eq!(out.to_ascii_lowercase().matches("output:sqlite").count(), 1);
        assert!(out.contains("Output:SQLite,\n    SimpleAndTabular;"));
        let objects = parse_idf(&out).unwrap();
        let timestep = objects.iter().find(|o| o.class == "Timestep").unwrap();
        assert_eq!(timestep.fields, vec!["4"]);
    }

    #[test]
    fn run_period_days_shortens_the_run_period() {
        let inputs = EnergyPlusInputs {
            run_period_days: Some(31),
            ..Default::default()
        };
        let objects = parse_idf(&idf(MODEL, &inputs).unwrap()).unwrap();
        let period = objects.iter().find(|o| o.class == "RunPeriod").unwrap();
        assert_eq!(&period.fields[4..6], &["1".to_owned(), "31".to_owned()]);
    }

    #[test]
    fn unsafe_objects_are_refused_by_name() {
        for (text, class) in [
            (
                "PythonPlugin:Instance, Hook, No, m, C;",
                "PythonPlugin:Instance",
            ),
            ("ExternalInterface, PtolemyServer;", "ExternalInterface"),
            (
                "EnergyManagementSystem:Program, Evil, SET x = 1;",
                "EnergyManagementSystem:Program",
            ),
            (
                "energymanagementsystem:subroutine, Sub, SET x = 1;",
                "energymanagementsystem:subroutine",
            ),
            ("Schedule:File, S, Any, /etc/passwd, 1, 0;", "Schedule:File"),
            (
                "Schedule:File, S, Any, https://x.test/s.csv, 1;",
                "Schedule:File",
            ),
            ("Schedule:File, S, Any, ../../s.csv, 1;", "Schedule:File"),
            ("Schedule:File, S, Any, C:\\s.csv, 1;", "Schedule:File"),
        ] {
            let refusal =
                idf(&format!("Version,25.2;\n{text}\n"), &Default::default()).expect_err(text);
            assert_eq!(refusal.class, class);
            assert!(refusal.sentence().contains(class), "{}", refusal.sentence());
        }
        assert!(
            idf(
                "Schedule:File, S, Any, schedules/occupancy.csv, 1;",
                &Default::default()
            )
            .is_ok()
        );
        // Only an object's class counts, not a mention in a comment or a name.
        assert!(
            idf(
                "Zone, PythonPlugin:Zone; ! ExternalInterface\n",
                &Default::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn epjson_is_checked_and_rewritten() {
        let model = json!({
            "Version": {"Version 1": {"version_identifier": "25.2"}},
            "Output:SQLite": {"Output:SQLite 1": {"option_type": "Simple"}},
            "RunPeriod": {"Annual": {"begin_month": 3, "begin_day_of_month": 1,
                                     "end_month": 12, "end_day_of_month": 31}}
        });
        let inputs = EnergyPlusInputs {
            run_period_days: Some(10),
            ..Default::default()
        };
        let prepared = prepare(
            Syntax::EpJson,
            &serde_json::to_vec(&model).unwrap(),
            &inputs,
        )
        .unwrap()
        .unwrap();
        assert_eq!(prepared.version.as_deref(), Some("25.2"));
        let out: Value = serde_json::from_slice(&prepared.text).unwrap();
        assert_eq!(
            out["Output:SQLite"],
            json!({"Output:SQLite 1": {"option_type": "SimpleAndTabular"}})
        );
        assert_eq!(out["RunPeriod"]["Annual"]["end_month"], 3);
        assert_eq!(out["RunPeriod"]["Annual"]["end_day_of_month"], 10);
        let evil = json!({"PythonPlugin:Instance": {"Hook": {}}});
        let refusal = prepare(Syntax::EpJson, &serde_json::to_vec(&evil).unwrap(), &inputs)
            .unwrap()
            .unwrap_err();
        assert_eq!(refusal.name.as_deref(), Some("Hook"));
    }

    #[test]
    fn an_unterminated_object_is_an_error() {
        assert!(parse_idf("Version, 25.2;\nZone, Z").is_err());
    }
}
