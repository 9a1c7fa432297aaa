//! PostgreSQL's own grammar, through libpg_query (the `pg_query` crate), as
//! an independent second reading of a statement for the policy's
//! cross-check (src/hoopfast/policy/crosscheck.py).
//!
//! Only what the cross-check compares is returned: per statement, its node
//! type, a few flags that change its class, the tables it names (with the
//! context libpg_query gives them: select, dml, ddl) and the functions it
//! calls. The mapping from these to statement classes is Python's, beside
//! the classifier it checks.

use std::ffi::CString;

use pg_query::protobuf::node::Node as NodeEnum;
use pg_query::{Context, NodeRef};
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

/// One statement as PostgreSQL's grammar reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgStatement {
    pub kind: &'static str,
    /// "analyze" (EXPLAIN with an ANALYZE option, whatever its value),
    /// "into" (SELECT INTO), "locking" (FOR UPDATE/SHARE anywhere),
    /// "copy_from", "copy_file" (a server file or PROGRAM),
    /// "set:NAME" / "reset:NAME" / "reset_all" / "set_transaction".
    pub flags: Vec<String>,
    pub tables: Vec<(String, &'static str)>,
    pub functions: Vec<String>,
}

macro_rules! stmt_kind {
    ($node:expr; $($variant:ident),* $(,)?) => {
        match $node {
            $(Some(NodeEnum::$variant(..)) => stringify!($variant),)*
            _ => "Other",
        }
    };
}

fn kind_of(node: Option<&NodeEnum>) -> &'static str {
    stmt_kind!(node; InsertStmt, DeleteStmt, UpdateStmt, MergeStmt, SelectStmt, SetOperationStmt, ReturnStmt, PlassignStmt, CreateSchemaStmt, AlterTableStmt, ReplicaIdentityStmt, AlterCollationStmt, AlterDomainStmt, GrantStmt, GrantRoleStmt, AlterDefaultPrivilegesStmt, CopyStmt, VariableSetStmt, VariableShowStmt, CreateStmt, CreateTableSpaceStmt, DropTableSpaceStmt, AlterTableSpaceOptionsStmt, AlterTableMoveAllStmt, CreateExtensionStmt, AlterExtensionStmt, AlterExtensionContentsStmt, CreateFdwStmt, AlterFdwStmt, CreateForeignServerStmt, AlterForeignServerStmt, CreateForeignTableStmt, CreateUserMappingStmt, AlterUserMappingStmt, DropUserMappingStmt, ImportForeignSchemaStmt, CreatePolicyStmt, AlterPolicyStmt, CreateAmStmt, CreateTrigStmt, CreateEventTrigStmt, AlterEventTrigStmt, CreatePlangStmt, CreateRoleStmt, AlterRoleStmt, AlterRoleSetStmt, DropRoleStmt, CreateSeqStmt, AlterSeqStmt, DefineStmt, CreateDomainStmt, CreateOpClassStmt, CreateOpFamilyStmt, AlterOpFamilyStmt, DropStmt, TruncateStmt, CommentStmt, SecLabelStmt, DeclareCursorStmt, ClosePortalStmt, FetchStmt, IndexStmt, CreateStatsStmt, AlterStatsStmt, CreateFunctionStmt, AlterFunctionStmt, DoStmt, CallStmt, RenameStmt, AlterObjectDependsStmt, AlterObjectSchemaStmt, AlterOwnerStmt, AlterOperatorStmt, AlterTypeStmt, RuleStmt, NotifyStmt, ListenStmt, UnlistenStmt, TransactionStmt, CompositeTypeStmt, CreateEnumStmt, CreateRangeStmt, AlterEnumStmt, ViewStmt, LoadStmt, CreatedbStmt, AlterDatabaseStmt, AlterDatabaseRefreshCollStmt, AlterDatabaseSetStmt, DropdbStmt, AlterSystemStmt, ClusterStmt, VacuumStmt, ExplainStmt, CreateTableAsStmt, RefreshMatViewStmt, CheckPointStmt, DiscardStmt, LockStmt, ConstraintsSetStmt, ReindexStmt, CreateConversionStmt, CreateCastStmt, CreateTransformStmt, PrepareStmt, ExecuteStmt, DeallocateStmt, DropOwnedStmt, ReassignOwnedStmt, AlterTsdictionaryStmt, AlterTsconfigurationStmt, CreatePublicationStmt, AlterPublicationStmt, CreateSubscriptionStmt, AlterSubscriptionStmt, DropSubscriptionStmt)
}

fn context_name(context: Context) -> &'static str {
    match context {
        Context::Select => "select",
        Context::DML => "dml",
        Context::DDL => "ddl",
        Context::Call => "call",
        Context::None => "none",
    }
}

fn flags_of(result: &pg_query::ParseResult) -> Vec<String> {
    let mut flags = Vec::new();
    for (node, _depth, _context, _) in result.protobuf.nodes() {
        match node {
            NodeRef::ExplainStmt(s) => {
                let analyze = s.options.iter().any(|o| match &o.node {
                    Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
                        option_on(d.arg.as_deref().and_then(|a| a.node.as_ref()))
                    }
                    _ => false,
                });
                if analyze {
                    flags.push("analyze".to_owned());
                }
            }
            NodeRef::SelectStmt(s) => {
                if s.into_clause.is_some() {
                    flags.push("into".to_owned());
                }
                if !s.locking_clause.is_empty() {
                    flags.push("locking".to_owned());
                }
            }
            NodeRef::CopyStmt(s) => {
                if s.is_from {
                    flags.push("copy_from".to_owned());
                }
                if s.is_program || !s.filename.is_empty() {
                    flags.push("copy_file".to_owned());
                }
            }
            NodeRef::VariableSetStmt(s) => {
                // SET standard_conforming_strings TO on: the value the gateway
                // pins, so no change (the classifier decides the spelling).
                let pinned_on = s.name.eq_ignore_ascii_case("standard_conforming_strings")
                    && s.kind == 1
                    && s.args.len() == 1
                    && matches!(&s.args[0].node, Some(NodeEnum::AConst(c))
                        if matches!(&c.val, Some(pg_query::protobuf::a_const::Val::Sval(v))
                            if matches!(v.sval.to_ascii_lowercase().as_str(), "on" | "true" | "yes")));
                if !pinned_on {
                    flags.push(setting_flag(s, false));
                }
            }
            // Settings stored for later sessions of a role or database.
            NodeRef::AlterRoleSetStmt(s) => {
                if let Some(set) = &s.setstmt {
                    flags.push(setting_flag(set, true));
                }
            }
            NodeRef::AlterDatabaseSetStmt(s) => {
                if let Some(set) = &s.setstmt {
                    flags.push(setting_flag(set, true));
                }
            }
            NodeRef::LockStmt(s) if s.mode == 1 => {
                flags.push("access_share".to_owned()); // AccessShareLock
            }
            _ => {}
        }
    }
    flags
}

/// PostgreSQL's grammar rejects the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    /// 1-based character position, as in ErrorResponse's P field; 0: none.
    pub position: i32,
}

impl From<String> for SyntaxError {
    fn from(message: String) -> Self {
        SyntaxError {
            message,
            position: 0,
        }
    }
}

impl From<&str> for SyntaxError {
    fn from(message: &str) -> Self {
        SyntaxError {
            message: message.to_owned(),
            position: 0,
        }
    }
}

/// libpg_query's C API, for the one thing the crate does not pass on: where
/// in the text a syntax error is (signatures from pg_query.h).
mod ffi {
    use std::os::raw::{c_char, c_int};

    #[repr(C)]
    pub struct PgQueryError {
        pub message: *mut c_char,
        pub funcname: *mut c_char,
        pub filename: *mut c_char,
        pub lineno: c_int,
        pub cursorpos: c_int,
        pub context: *mut c_char,
    }

    #[repr(C)]
    pub struct PgQueryParseResult {
        pub parse_tree: *mut c_char,
        pub stderr_buffer: *mut c_char,
        pub error: *mut PgQueryError,
    }

    extern "C" {
        pub fn pg_query_parse(input: *const c_char) -> PgQueryParseResult;
        pub fn pg_query_free_parse_result(result: PgQueryParseResult);
    }
}

fn error_position(sql: &str) -> i32 {
    let Ok(input) = CString::new(sql) else {
        return 0;
    };
    // SAFETY: a NUL-terminated input; the result is freed exactly once, and
    // the error pointer is read only while the result is alive.
    unsafe {
        let result = ffi::pg_query_parse(input.as_ptr());
        let position = if result.error.is_null() {
            0
        } else {
            (*result.error).cursorpos
        };
        ffi::pg_query_free_parse_result(result);
        position
    }
}

/// Whether a boolean option (`ANALYZE`, `ANALYZE off`, `ANALYZE 0`...) is on,
/// as PostgreSQL's defGetBoolean reads it. Anything not plainly off counts
/// as on: this reading only ever adds to what the classifier must report.
fn option_on(arg: Option<&NodeEnum>) -> bool {
    match arg {
        None => true,
        Some(NodeEnum::Integer(i)) => i.ival != 0,
        Some(NodeEnum::Boolean(b)) => b.boolval,
        Some(NodeEnum::String(v)) => !matches!(
            v.sval.to_ascii_lowercase().as_str(),
            "off" | "false" | "no" | "0" | "f" | "n"
        ),
        Some(_) => true,
    }
}

fn setting_flag(s: &pg_query::protobuf::VariableSetStmt, stored: bool) -> String {
    // VariableSetKind: 1 SET VALUE, 2 SET DEFAULT, 3 SET CURRENT,
    // 4 SET MULTI (SET TRANSACTION ...), 5 RESET, 6 RESET ALL.
    let name = s.name.to_ascii_lowercase();
    let none = s.args.len() == 1
        && matches!(&s.args[0].node, Some(NodeEnum::AConst(c))
            if matches!(&c.val, Some(pg_query::protobuf::a_const::Val::Sval(v)) if v.sval.eq_ignore_ascii_case("none")));
    match s.kind {
        // A stored RESET ALL can drop any setting an administrator stored.
        6 if stored => "set:*".to_owned(),
        4 => "set_transaction".to_owned(),
        5 | 6 if !stored && (s.kind == 6 || name == "role" || name == "session_authorization") => {
            // Back to the login identity / the startup values.
            "reset_all".to_owned()
        }
        5 => format!("reset:{name}"),
        // SET ROLE NONE, SET SESSION AUTHORIZATION DEFAULT: back to the login identity.
        _ if !stored && name == "role" && none => "reset_all".to_owned(),
        2 if !stored && name == "session_authorization" => "reset_all".to_owned(),
        _ => format!("set:{name}"),
    }
}

/// The stack a parse runs on. libpg_query writes its tree out, prost reads
/// it back and it is dropped, each recursively, a level per term of an
/// operator chain (`1+1+...`, `a || b || ...`, `UNION ALL` after `UNION
/// ALL`): on the 8 MiB of the gateway's thread 50,000 terms overflowed the
/// stack and the whole gateway died. Reserved, not committed: only what a
/// parse touches is ever backed by memory.
const PARSE_STACK: usize = 1 << 30;

/// The deepest text parsed, in fingerprint::nesting_bound's tokens. The
/// deepest chain measured here (`1+1+...`) takes about 18 KiB of stack a
/// term (prost's frames for the Node enum are large), a nested sub-select
/// a few levels a bracket: past this a text could need more than
/// PARSE_STACK. PostgreSQL itself refuses a chain of 10,000 terms (stack
/// depth limit exceeded, at its default max_stack_depth).
pub const MAX_NESTING: usize = 20_000;

/// Why a text was not parsed: a syntax error, or too deep to be parsed
/// safely (see MAX_NESTING).
#[derive(Debug)]
pub enum ParseFailure {
    Syntax(SyntaxError),
    TooLarge(String),
}

/// `parse`, on a thread of its own with PARSE_STACK of stack, for any text;
/// a text that could nest deeper than MAX_NESTING is not parsed.
pub fn parse_guarded(sql: &str) -> Result<Vec<PgStatement>, ParseFailure> {
    let bound = crate::fingerprint::nesting_bound(sql.as_bytes());
    if bound > MAX_NESTING {
        return Err(ParseFailure::TooLarge(format!(
            "the statement is too complex for the gateway to check: {bound} operators, words \
             and nested brackets (at most {MAX_NESTING}); PostgreSQL refuses chains much \
             shorter (stack depth); use IN lists, arrays or bound parameters"
        )));
    }
    let owned = sql.to_owned();
    let worker = std::thread::Builder::new()
        .name("pg_parse".into())
        .stack_size(PARSE_STACK)
        .spawn(move || parse(&owned))
        .map_err(|e| ParseFailure::TooLarge(format!("cannot start the parser's thread: {e}")))?;
    match worker.join() {
        Ok(result) => result.map_err(ParseFailure::Syntax),
        Err(_) => Err(ParseFailure::TooLarge(
            "the parser failed on this statement".into(),
        )),
    }
}

/// Parse `sql` and describe each statement. Err: PostgreSQL's grammar
/// rejects the text (libpg_query's message, and where). Deep statements
/// need a deep stack: see parse_guarded.
pub fn parse(sql: &str) -> Result<Vec<PgStatement>, SyntaxError> {
    let whole = match pg_query::parse(sql) {
        Ok(whole) => whole,
        Err(pg_query::Error::Parse(message)) => {
            return Err(SyntaxError {
                message,
                position: error_position(sql),
            })
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let mut out = Vec::with_capacity(whole.protobuf.stmts.len());
    for raw in &whole.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).map_err(|_| "bad statement location")?;
        let end = if raw.stmt_len == 0 {
            sql.len()
        } else {
            start + usize::try_from(raw.stmt_len).map_err(|_| "bad statement length")?
        };
        let text = sql
            .get(start..end)
            .ok_or("statement boundary inside a character")?;
        // Parsed alone, so tables and functions are per statement.
        let one = pg_query::parse(text).map_err(|e| SyntaxError::from(e.to_string()))?;
        let node = raw.stmt.as_ref().and_then(|n| n.node.as_ref());
        let mut tables: Vec<(String, &'static str)> = one
            .tables
            .iter()
            .map(|(name, ctx)| (name.clone(), context_name(*ctx)))
            .collect();
        tables.sort();
        let mut functions: Vec<String> =
            one.functions.iter().map(|(name, _)| name.clone()).collect();
        functions.sort();
        functions.dedup();
        out.push(PgStatement {
            kind: kind_of(node),
            flags: flags_of(&one),
            tables,
            functions,
        });
    }
    Ok(out)
}

type PyStatement = (String, Vec<String>, Vec<(String, String)>, Vec<String>);

/// `pg_parse(sql) -> [(kind, flags, [(table, context)], [function])]`;
/// ValueError(message, position) when PostgreSQL's grammar rejects the text,
/// OverflowError(message) when it is too deep to parse safely. The GIL is
/// released while it parses (on a thread of its own: parse_guarded).
#[pyfunction]
#[pyo3(name = "pg_parse")]
pub fn py_pg_parse(py: Python<'_>, sql: &str) -> PyResult<Vec<PyStatement>> {
    let statements = py.detach(|| parse_guarded(sql)).map_err(|e| match e {
        ParseFailure::Syntax(e) => PyValueError::new_err((e.message, e.position)),
        ParseFailure::TooLarge(message) => PyOverflowError::new_err(message),
    })?;
    Ok(statements
        .into_iter()
        .map(|s| {
            (
                s.kind.to_owned(),
                s.flags,
                s.tables
                    .into_iter()
                    .map(|(t, c)| (t, c.to_owned()))
                    .collect(),
                s.functions,
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<&'static str> {
        parse(sql).unwrap().into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn statement_kinds_and_boundaries() {
        assert_eq!(
            kinds("SELECT 1; DELETE FROM t; SET ROLE x"),
            ["SelectStmt", "DeleteStmt", "VariableSetStmt"]
        );
        assert_eq!(
            kinds("SELECT ';'; SELECT $$;$$"),
            ["SelectStmt", "SelectStmt"]
        );
        let err = parse("SELECT 1; SELEC 1").unwrap_err();
        assert_eq!(err.message, "syntax error at or near \"SELEC\"");
        assert_eq!(err.position, 11);
    }

    #[test]
    fn data_modifying_cte_is_dml() {
        let s = &parse("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").unwrap()[0];
        assert_eq!(s.kind, "SelectStmt");
        assert!(s.tables.contains(&("t".to_owned(), "dml")));
    }

    #[test]
    fn flags() {
        let f = |sql: &str| parse(sql).unwrap().remove(0).flags;
        assert_eq!(f("EXPLAIN (ANALYZE) DELETE FROM t"), ["analyze"]);
        assert_eq!(f("EXPLAIN ANALYZE DELETE FROM t"), ["analyze"]);
        assert_eq!(f("EXPLAIN (ANALYZE on) DELETE FROM t"), ["analyze"]);
        assert_eq!(f("EXPLAIN (ANALYZE 1) DELETE FROM t"), ["analyze"]);
        assert!(f("EXPLAIN (ANALYZE false) DELETE FROM t").is_empty());
        assert!(f("EXPLAIN (ANALYZE off) DELETE FROM t").is_empty());
        assert!(f("EXPLAIN (ANALYZE 0) DELETE FROM t").is_empty());
        assert!(f("EXPLAIN DELETE FROM t").is_empty());
        assert_eq!(f("SELECT * INTO n FROM t"), ["into"]);
        assert_eq!(f("SELECT * FROM t FOR UPDATE"), ["locking"]);
        assert_eq!(f("COPY t FROM PROGRAM 'x'"), ["copy_from", "copy_file"]);
        assert_eq!(f("SET ROLE admin"), ["set:role"]);
        assert_eq!(
            f("SET SESSION AUTHORIZATION admin"),
            ["set:session_authorization"]
        );
        assert_eq!(f("RESET ALL"), ["reset_all"]);
        assert_eq!(f("RESET ROLE"), ["reset_all"]);
        assert_eq!(f("SET ROLE NONE"), ["reset_all"]);
        assert_eq!(f("SET SESSION AUTHORIZATION DEFAULT"), ["reset_all"]);
        assert_eq!(f("RESET search_path"), ["reset:search_path"]);
        assert!(f("SET standard_conforming_strings TO on").is_empty());
        assert_eq!(
            f("SET standard_conforming_strings TO off"),
            ["set:standard_conforming_strings"]
        );
        assert_eq!(f("ALTER ROLE app SET role = admin"), ["set:role"]);
        assert_eq!(
            f("ALTER ROLE app IN DATABASE d SET search_path = v"),
            ["set:search_path"]
        );
        assert_eq!(f("ALTER DATABASE app SET role = x"), ["set:role"]);
        assert_eq!(f("ALTER ROLE app RESET ALL"), ["set:*"]);
        assert_eq!(f("LOCK t IN ACCESS SHARE MODE"), ["access_share"]);
        assert!(f("LOCK t").is_empty());
    }

    #[test]
    fn identifiers_as_postgresql_folds_them() {
        let s = &parse("SELECT * FROM PUBLIC.PAYROLL, \"Secret\", U&\"\\0070ay\"").unwrap()[0];
        let names: Vec<&str> = s.tables.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["Secret", "pay", "public.payroll"]);
    }
}
