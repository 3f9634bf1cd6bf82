//! Filter source forms and compile errors.
//!
//! The original system ran `eval(filter)` in Nashorn and used the value as the filter, so it took
//! any expression that yields a function, including the non-standard anonymous
//! `function(event) { ... }` statement. rtcrm compiles a source in the first of these forms that
//! QuickJS accepts:
//!
//! 1. [`SourceForm::Expression`]: the source inside parentheses, trailing `;` removed
//!    (`function(e) {...}`, `function f(e) {...}`, `e => ...`, an IIFE returning the filter);
//! 2. [`SourceForm::Script`]: global code whose completion value is the filter, like `eval`
//!    (`const limit = 3; (e => e.data.level > limit)`);
//! 3. [`SourceForm::Module`]: an ES module whose default export is the filter.
//!
//! When none compiles, the error reported is the module's if the source uses `export` or
//! `import`, else that of the form whose parse got furthest; its line and column point into the
//! user's own text.

use std::fmt;

/// How a filter's source was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceForm {
    /// An expression, compiled as `(` source `\n)`.
    Expression,
    /// Global code; the completion value is the filter.
    Script,
    /// An ES module; the default export is the filter.
    Module,
}

impl SourceForm {
    /// The forms in the order they are tried.
    pub const ALL: [SourceForm; 3] = [SourceForm::Expression, SourceForm::Script, SourceForm::Module];

    /// Whether QuickJS compiles this form as a module (else as global code).
    pub fn is_module(self) -> bool {
        self == SourceForm::Module
    }

    /// The text handed to QuickJS for `source` in this form.
    pub fn wrap(self, source: &str) -> String {
        match self {
            SourceForm::Expression => {
                let body = source.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
                format!("({body}\n)")
            }
            SourceForm::Script | SourceForm::Module => source.to_owned(),
        }
    }

    /// Maps a 1-based position reported for the wrapped text back to `source`. Positions past
    /// the end of the user's text (on the closing wrapper) are clamped to its last character.
    pub fn map_position(self, source: &str, line: u32, column: u32) -> (u32, u32) {
        let (mut line, mut column) = (line.max(1), column.max(1));
        if self == SourceForm::Expression && line == 1 {
            column = column.saturating_sub(1).max(1);
        }
        let lines: Vec<&str> = source.split('\n').collect();
        let last = lines.len() as u32;
        if line > last {
            line = last;
            column = lines[lines.len() - 1].chars().count() as u32 + 1;
        }
        (line, column)
    }

    /// [`SourceForm::Module`] when the source uses `export` or `import` (its error is the one to
    /// report), else [`SourceForm::Expression`].
    pub fn reported_for(source: &str) -> SourceForm {
        let uses_modules = source.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .any(|word| word == "export" || word == "import");
        if uses_modules {
            SourceForm::Module
        } else {
            SourceForm::Expression
        }
    }
}

impl fmt::Display for SourceForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceForm::Expression => "expression",
            SourceForm::Script => "script",
            SourceForm::Module => "module",
        })
    }
}

/// Why a filter's source was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// QuickJS could not parse the source. Line and column are 1-based, in the user's text.
    #[error("{line}:{column}: {message}")]
    Syntax {
        /// QuickJS's message, e.g. `SyntaxError: unexpected token in expression: ';'`.
        message: String,
        /// Line in the user's source.
        line: u32,
        /// Column in the user's source.
        column: u32,
    },
    /// The source compiled but does not yield a function.
    #[error("the filter must evaluate to a function (e.g. `function(event) {{ return ... }}`), but it evaluates to {found}")]
    NotAFunction {
        /// The JavaScript type it yielded (`undefined`, `object`, `number`, ...).
        found: String,
    },
    /// Evaluating the source's top-level code threw.
    #[error("evaluating the filter's top-level code threw: {message}")]
    TopLevelThrew {
        /// The thrown value, as text.
        message: String,
    },
    /// Evaluating the source's top-level code hit a limit or trapped (e.g. an endless loop).
    #[error("evaluating the filter's top-level code failed: {0}")]
    TopLevelFailed(String),
    /// The source is larger than the host accepts.
    #[error("the filter source is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Size of the submitted source.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl CompileError {
    /// Parses the runtime's `line:column:message` report for `form` into a syntax error
    /// positioned in the user's `source`.
    pub fn from_runtime_report(source: &str, form: SourceForm, report: &str) -> CompileError {
        let mut parts = report.splitn(3, ':');
        let line = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let column = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let message = parts.next().unwrap_or(report).trim().to_owned();
        let (line, column) = form.map_position(source, line, column);
        CompileError::Syntax { message, line, column }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_form_strips_trailing_semicolons_and_closes_on_a_new_line() {
        assert_eq!(SourceForm::Expression.wrap("e => true;;  \n"), "(e => true\n)");
        assert_eq!(SourceForm::Expression.wrap("e => true // done"), "(e => true // done\n)");
    }

    #[test]
    fn positions_on_the_first_line_lose_the_opening_parenthesis() {
        let src = "function(e) { return e.x === ; }";
        assert_eq!(SourceForm::Expression.map_position(src, 1, 31), (1, 30));
        assert_eq!(SourceForm::Expression.map_position("a\nb", 2, 3), (2, 3));
        assert_eq!(SourceForm::Script.map_position(src, 1, 31), (1, 31));
    }

    #[test]
    fn positions_on_the_closing_wrapper_are_clamped_to_the_end_of_the_source() {
        assert_eq!(SourceForm::Expression.map_position("e => (\n  1", 3, 1), (2, 4));
    }

    #[test]
    fn module_syntax_selects_the_module_error() {
        assert_eq!(SourceForm::reported_for("export default e => 1 +"), SourceForm::Module);
        assert_eq!(SourceForm::reported_for("e => e.exported +"), SourceForm::Expression);
    }

    #[test]
    fn runtime_reports_become_positioned_syntax_errors() {
        let err = CompileError::from_runtime_report(
            "e => e.x ===",
            SourceForm::Expression,
            "2:1:SyntaxError: unexpected token in expression: ')'",
        );
        assert_eq!(
            err,
            CompileError::Syntax {
                message: "SyntaxError: unexpected token in expression: ')'".into(),
                line: 1,
                column: 13
            }
        );
    }
}
