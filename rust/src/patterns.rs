//! Deny patterns: every regular expression of a grant searched in one pass
//! over the statement text (a `RegexSet`: one automaton, no per-pattern
//! loop, linear time whatever the input, so a pattern cannot be made to
//! backtrack for ever on a hostile statement).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use regex::RegexSet;

/// Patterns in the regex crate's syntax (no look-around, no
/// backreferences); the Python reference uses `re` for the same API.
#[pyclass(frozen, name = "PatternSet", module = "hoopfast_core")]
pub struct PyPatternSet {
    set: RegexSet,
}

#[pymethods]
impl PyPatternSet {
    #[new]
    fn new(patterns: Vec<String>) -> PyResult<Self> {
        // Bounded compiled size: a pattern from a config file must not be
        // able to exhaust memory either.
        let set = regex::RegexSetBuilder::new(&patterns)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyPatternSet { set })
    }

    /// Index of the first pattern (in the given order) found in `text`, or None.
    fn first_match(&self, text: &str) -> Option<usize> {
        if !self.set.is_match(text) {
            return None;
        }
        self.set.matches(text).iter().next()
    }

    fn __len__(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_in_order() {
        let set = PyPatternSet::new(vec!["(?i)secret".into(), r"\bpg_sleep\s*\(".into()]).unwrap();
        assert!(!set.set.is_match("SELECT 1"));
        assert_eq!(
            set.set
                .matches("SELECT pg_sleep (1), 'SECRET'")
                .iter()
                .next(),
            Some(0)
        );
        assert!(PyPatternSet::new(vec!["(a)\\1".into()]).is_err());
    }
}
