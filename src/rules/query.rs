//! An invariant's query, checked with its source's SQL grammar when the file loads, so that
//! `validate` refuses what a run would: several statements, or a statement that is not a
//! query. The source's own guards (`source/`) still hold at run time; this only moves the
//! refusal to where the mistake is, with its line.

use sqlparser::ast::{Statement, Visit, Visitor};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::config::SourceKind;

/// The grammar of an engine.
pub(crate) fn dialect(engine: SourceKind) -> &'static dyn Dialect {
    match engine {
        SourceKind::Postgres => &PostgreSqlDialect {},
        SourceKind::MySql => &MySqlDialect {},
        SourceKind::Sqlite => &SQLiteDialect {},
    }
}

/// Refuses a query that is not one row-returning statement. Where the grammar here does not
/// know a construct, the tokens still decide the statement count and kind, and whatever they
/// cannot judge is left to the database (which runs the query read-only either way).
pub(crate) fn check_query(sql: &str, engine: SourceKind) -> Result<(), String> {
    let dialect = dialect(engine);
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    if significant.iter().any(|t| matches!(t, Token::SemiColon)) {
        return Err(
            "holds more than one statement (a `;` inside it); an invariant query is one SELECT"
                .into(),
        );
    }
    match significant.first() {
        Some(Token::Word(w))
            if matches!(
                w.keyword,
                Keyword::SELECT | Keyword::WITH | Keyword::VALUES | Keyword::TABLE
            ) => {}
        Some(Token::LParen) => {}
        Some(Token::Word(w)) => {
            return Err(format!(
                "is a `{}` statement; an invariant query is one SELECT (or WITH ... SELECT), which trueup runs read-only",
                w.value.to_uppercase()
            ));
        }
        _ => return Err("is not a query; an invariant query is one SELECT".into()),
    }
    // A data-modifying statement inside a WITH is refused by the database at run time;
    // refuse it here, with the line.
    if let Ok(statements) = Parser::parse_sql(dialect, sql) {
        for statement in &statements {
            let mut found = ModifiesData(None);
            let _ = statement.visit(&mut found);
            if let Some(what) = found.0 {
                return Err(format!(
                    "modifies data ({what} inside it); an invariant query only reads"
                ));
            }
        }
    }
    Ok(())
}

/// Finds the first INSERT, UPDATE, DELETE or MERGE anywhere in a statement.
struct ModifiesData(Option<&'static str>);

impl Visitor for ModifiesData {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> std::ops::ControlFlow<()> {
        let what = match statement {
            Statement::Insert(_) => "INSERT",
            Statement::Update { .. } => "UPDATE",
            Statement::Delete(_) => "DELETE",
            Statement::Merge { .. } => "MERGE",
            _ => return std::ops::ControlFlow::Continue(()),
        };
        self.0 = Some(what);
        std::ops::ControlFlow::Break(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_query;
    use crate::config::SourceKind;

    const ENGINES: [SourceKind; 3] = [SourceKind::Postgres, SourceKind::MySql, SourceKind::Sqlite];

    #[test]
    fn one_query_passes_on_every_engine() {
        for sql in [
            "SELECT id FROM t",
            "select id, ';' AS semi FROM t -- trailing; comment",
            "WITH x AS (SELECT 1 AS id) SELECT id FROM x",
            "(SELECT 1 AS id) UNION ALL (SELECT 2)",
            "VALUES (1)",
        ] {
            for engine in ENGINES {
                assert_eq!(check_query(sql, engine), Ok(()), "{engine:?}: {sql}");
            }
        }
        // Dialect-specific quoting and functions the parser may not know still pass.
        assert_eq!(
            check_query("SELECT $$a;b$$ AS x, id::text FROM t", SourceKind::Postgres),
            Ok(())
        );
        assert_eq!(
            check_query("SELECT 'it\\'s; fine' AS x", SourceKind::MySql),
            Ok(())
        );
    }

    #[test]
    fn several_statements_and_writes_are_refused_with_what_they_are() {
        for (sql, says) in [
            ("SELECT 1; DELETE FROM t", "more than one statement"),
            ("SELECT 1 AS id; COMMIT", "more than one statement"),
            ("DELETE FROM t RETURNING id", "is a `DELETE` statement"),
            ("update t set x = 1", "is a `UPDATE` statement"),
            ("PRAGMA query_only = OFF", "is a `PRAGMA` statement"),
            (
                "WITH d AS (DELETE FROM t RETURNING id) SELECT id FROM d",
                "modifies data (DELETE inside it)",
            ),
        ] {
            let err = check_query(sql, SourceKind::Postgres).unwrap_err();
            assert!(err.contains(says), "{sql}: {err}");
        }
    }
}
