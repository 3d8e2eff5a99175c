//! Step kinds. Each kind is a settings struct (typed, documented, validated) that implements
//! the engine's [`Step`] contract in its own file; [`KINDS`] is the closed list a pipeline file
//! may name, handed to [`crate::pipeline::load`].

pub mod command;
pub mod compare;
pub mod convert;
pub mod eval;
pub mod fetch;
pub mod grpo;
pub mod import;
pub mod layer_probe;
pub mod model;
pub mod sft;
pub mod stage1;
pub mod stage2;
pub mod student_out;
pub mod tokenize;

use crate::pipeline::step::{StepKind, kind};

/// The kinds accepted by `kind = "..."`.
pub const KINDS: &[StepKind] = &[
    kind::<command::CommandSettings>("command"),
    kind::<fetch::FetchSettings>("fetch"),
    kind::<import::ImportSettings>("import"),
    kind::<model::ModelSettings>("model"),
    kind::<tokenize::TokenizeSettings>("tokenize"),
    kind::<stage1::Stage1Settings>("stage1"),
    kind::<stage2::Stage2Settings>("stage2"),
    kind::<sft::SftSettings>("sft"),
    kind::<grpo::GrpoSettings>("grpo"),
    kind::<convert::ConvertSettings>("convert"),
    kind::<eval::EvalSettings>("eval"),
    kind::<compare::CompareSettings>("compare"),
];

#[cfg(test)]
mod tests {
    /// Each kind's settings report the name they are registered under.
    #[test]
    fn kinds_are_registered_under_their_own_names() {
        let map = crate::pipeline::source::SourceMap::default();
        let mut names = std::collections::BTreeSet::new();
        for k in super::KINDS {
            assert!(names.insert(k.name), "{} twice", k.name);
            // An empty table fails to decode (required keys), but the decoder is the kind's.
            let mut d = crate::pipeline::Diagnostics::default();
            let _ = (k.decode)(toml::Value::Table(Default::default()), &[], &map, &mut d);
        }
        assert_eq!(names.len(), 12);
    }
}
