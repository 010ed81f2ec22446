//! Where a run's and an attempt's objects live: the only place object keys are made.
//!
//! ```text
//! runs/<org>/<run>/files/<upload>/<index>-<name>    the run's input files (shared by its attempts)
//! runs/<org>/<run>/attempts/<attempt>/input.json    the attempt's input envelope
//! runs/<org>/<run>/attempts/<attempt>/output.json   the attempt's output envelope
//! runs/<org>/<run>/attempts/<attempt>/outputs/…     the files its validator published
//! ```
//!
//! Input files live at the run level: they are immutable and bound by sha256 in every envelope,
//! so a retried attempt reuses them instead of copying. A retried run (a new run made from an
//! ended one) gets copies in its own folder, as any new run has its own files. Each request that creates a run uploads into a
//! folder of its own (`<upload>`), so a refused request can remove exactly what it staged and
//! two requests racing under one idempotency key never share an object. Every attempt has a
//! folder of its own, so a retry never meets its predecessor's `output.json` (objects are
//! create-only).
//!
//! Paths are typed ([`RunPaths`], [`AttemptPaths`]) and built from the run's organization and
//! the run and attempt ids; an attempt's folder is stored with the attempt, and read back
//! through [`AttemptPaths::from_root`], which checks it still has this shape.

use std::fmt;

use uuid::Uuid;

use super::{ObjectKey, StorageError};

/// The input envelope's name in an attempt's folder.
pub const INPUT_ENVELOPE: &str = "input.json";
/// The output envelope's name in an attempt's folder.
pub const OUTPUT_ENVELOPE: &str = "output.json";
/// The folder, in an attempt's folder, that holds the files its validator published.
pub const OUTPUTS_DIR: &str = "outputs";

const RUNS: &str = "runs";
const FILES: &str = "files";
const ATTEMPTS: &str = "attempts";

/// The objects of one run: `runs/<org>/<run>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunPaths {
    root: ObjectKey,
}

impl RunPaths {
    /// The folder of run `run_id` of organization `org_id` (which must be usable as one key
    /// segment: the API checks organization ids before anything is stored).
    pub fn new(org_id: &str, run_id: Uuid) -> Result<Self, StorageError> {
        if org_id.contains('/') {
            return Err(StorageError::InvalidKey {
                key: org_id.to_owned(),
                reason: "an organization id must be a single key segment".to_owned(),
            });
        }
        let root = ObjectKey::parse(format!("{RUNS}/{org_id}/{}", run_id.hyphenated()))?;
        Ok(Self { root })
    }

    /// `runs/<org>/<run>`.
    pub fn root(&self) -> &ObjectKey {
        &self.root
    }

    /// The folder one request uploads this run's input files into: `files/<upload>`.
    pub fn upload(&self, upload_id: Uuid) -> UploadPaths {
        let root = self
            .root
            .join(&format!("{FILES}/{}", upload_id.hyphenated()))
            .expect("a run folder followed by a UUID is a valid key");
        UploadPaths { root }
    }

    /// The folder of attempt `attempt_id` of this run.
    pub fn attempt(&self, attempt_id: Uuid) -> AttemptPaths {
        let root = self
            .root
            .join(&format!("{ATTEMPTS}/{}", attempt_id.hyphenated()))
            .expect("a run folder followed by a UUID is a valid key");
        AttemptPaths { root }
    }
}

/// One request's uploads of a run's input files: `runs/<org>/<run>/files/<upload>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadPaths {
    root: ObjectKey,
}

impl UploadPaths {
    /// The key of input file number `index` (0-based) named `name`: `<index>-<name>`. The index
    /// keeps two files' keys apart whatever their names.
    pub fn input_file(&self, index: usize, name: &str) -> Result<ObjectKey, StorageError> {
        if name.contains('/') {
            return Err(StorageError::InvalidKey {
                key: name.to_owned(),
                reason: "a file name must be a single key segment".to_owned(),
            });
        }
        self.root.join(&format!("{index}-{name}"))
    }
}

/// The objects of one attempt: `runs/<org>/<run>/attempts/<attempt>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptPaths {
    root: ObjectKey,
}

impl AttemptPaths {
    /// An attempt's folder as stored with the attempt; refused unless it has this layout's
    /// shape (`runs/<org>/<run uuid>/attempts/<attempt uuid>`).
    pub fn from_root(root: &str) -> Result<Self, StorageError> {
        let key = ObjectKey::parse(root)?;
        let segments: Vec<&str> = key.segments().collect();
        let shaped = matches!(
            segments.as_slice(),
            [RUNS, _, run, ATTEMPTS, attempt]
                if Uuid::parse_str(run).is_ok() && Uuid::parse_str(attempt).is_ok()
        );
        if !shaped {
            return Err(StorageError::InvalidKey {
                key: root.to_owned(),
                reason: "an attempt folder is runs/<org>/<run>/attempts/<attempt>".to_owned(),
            });
        }
        Ok(Self { root: key })
    }

    /// `runs/<org>/<run>/attempts/<attempt>`.
    pub fn root(&self) -> &ObjectKey {
        &self.root
    }

    /// `…/input.json`.
    pub fn input(&self) -> ObjectKey {
        self.leaf(INPUT_ENVELOPE)
    }

    /// `…/output.json`.
    pub fn output(&self) -> ObjectKey {
        self.leaf(OUTPUT_ENVELOPE)
    }

    /// `…/outputs`, the folder of published files.
    pub fn outputs(&self) -> ObjectKey {
        self.leaf(OUTPUTS_DIR)
    }

    /// `…/outputs/<name>`, for a name that is one safe key segment.
    pub fn output_file(&self, name: &str) -> Result<ObjectKey, StorageError> {
        if name.contains('/') {
            return Err(StorageError::InvalidKey {
                key: name.to_owned(),
                reason: "an output file name must be a single key segment".to_owned(),
            });
        }
        self.root.join(&format!("{OUTPUTS_DIR}/{name}"))
    }

    /// The folder of another attempt of the same run (a retry gets a fresh one).
    pub fn sibling(&self, attempt_id: Uuid) -> AttemptPaths {
        let root = ObjectKey::parse(format!(
            "{}/{ATTEMPTS}/{}",
            self.run_root_str(),
            attempt_id.hyphenated()
        ))
        .expect("a run folder followed by a UUID is a valid key");
        AttemptPaths { root }
    }

    /// The folder of the run this attempt belongs to: `runs/<org>/<run>`.
    pub fn run_root(&self) -> ObjectKey {
        ObjectKey::parse(self.run_root_str()).expect("checked shape: a prefix of a valid key")
    }

    /// The folder every upload of the run's input files lives under: `runs/<org>/<run>/files`.
    pub fn run_files(&self) -> ObjectKey {
        self.run_root()
            .join(FILES)
            .expect("a run folder followed by a fixed name is a valid key")
    }

    fn run_root_str(&self) -> &str {
        let (run, _) = self
            .root
            .as_str()
            .rsplit_once(&format!("/{ATTEMPTS}/"))
            .expect("checked shape: the folder ends in attempts/<attempt>");
        run
    }

    fn leaf(&self, leaf: &str) -> ObjectKey {
        self.root
            .join(leaf)
            .expect("an attempt folder followed by a fixed name is a valid key")
    }
}

impl fmt::Display for AttemptPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7())
    }

    #[test]
    fn each_upload_has_its_folder() {
        let (run, u1, u2) = ids();
        let paths = RunPaths::new("org-1", run).expect("run paths");
        let key = paths.upload(u1).input_file(3, "model.idf").expect("key");
        assert_eq!(
            key.as_str(),
            format!("runs/org-1/{run}/files/{u1}/3-model.idf")
        );
        assert_ne!(
            key,
            paths.upload(u2).input_file(3, "model.idf").expect("key")
        );
        assert!(paths.upload(u1).input_file(0, "a/b").is_err());
    }

    #[test]
    fn keys_follow_the_layout() {
        let (run, a1, a2) = ids();
        let paths = RunPaths::new("org-1", run).expect("run paths");
        assert_eq!(paths.root().as_str(), format!("runs/org-1/{run}"));
        let attempt = paths.attempt(a1);
        let root = format!("runs/org-1/{run}/attempts/{a1}");
        assert_eq!(attempt.root().as_str(), root);
        assert_eq!(attempt.input().as_str(), format!("{root}/input.json"));
        assert_eq!(attempt.output().as_str(), format!("{root}/output.json"));
        assert_eq!(attempt.outputs().as_str(), format!("{root}/outputs"));
        assert_eq!(
            attempt.output_file("eplusout.sql").expect("key").as_str(),
            format!("{root}/outputs/eplusout.sql")
        );
        let retry = attempt.sibling(a2);
        assert_eq!(
            retry.root().as_str(),
            format!("runs/org-1/{run}/attempts/{a2}")
        );
        assert_eq!(AttemptPaths::from_root(&root).expect("stored"), attempt);
    }

    #[test]
    fn unsafe_parts_and_foreign_shapes_are_refused() {
        let (run, attempt, _) = ids();
        assert!(RunPaths::new("a/b", run).is_err());
        assert!(RunPaths::new("..", run).is_err());
        assert!(RunPaths::new("", run).is_err());
        let paths = RunPaths::new("org", run).expect("run paths");
        assert!(paths.attempt(attempt).output_file("../x").is_err());
        for stored in [
            "runs/org/attempts/x",
            "runs/org/not-a-uuid/attempts/also-not",
            "elsewhere/org/0/attempts/0",
            "runs/org/00000000-0000-0000-0000-000000000000/attempts/",
        ] {
            assert!(AttemptPaths::from_root(stored).is_err(), "{stored}");
        }
    }
}
