//! hoopfast_core: the compiled hot path of hoopfast (PostgreSQL framing,
//! message codec, SQL fingerprints, PostgreSQL-grammar cross-check). This
//! file only registers the Python module; the logic is in [`framer`],
//! [`messages`], [`fingerprint`], [`patterns`], [`mask`] and [`pgparse`].

pub mod fingerprint;
pub mod framer;
pub mod mask;
pub mod messages;
pub mod patterns;
pub mod pgparse;

use pyo3::prelude::*;

#[pymodule]
fn hoopfast_core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("IMPLEMENTATION", "compiled")?;
    m.add(
        "FramingError",
        m.py().get_type::<framer::exc::FramingError>(),
    )?;
    m.add_class::<framer::PyFramer>()?;
    messages::register(m)?;
    m.add_function(wrap_pyfunction!(fingerprint::py_fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(pgparse::py_pg_parse, m)?)?;
    m.add_class::<patterns::PyPatternSet>()?;
    m.add_class::<mask::PyMaskPlan>()?;
    Ok(())
}
