use crate::ast::*;
use crate::parser::parse;

fn p(s: &str) -> Expr {
    parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn precedence_and_shapes() {
    assert_eq!(
        p("1 + 2 * 3"),
        Expr::Binary(
            BinaryOp::Add,
            Box::new(Expr::Literal(Literal::Number("1".into()))),
            Box::new(Expr::Binary(
                BinaryOp::Mul,
                Box::new(Expr::Literal(Literal::Number("2".into()))),
                Box::new(Expr::Literal(Literal::Number("3".into())))
            ))
        )
    );
    assert!(matches!(
        p("a or b and c"),
        Expr::Binary(BinaryOp::Or, _, _)
    ));
    assert!(matches!(
        p("a implies b or c"),
        Expr::Binary(BinaryOp::Implies, _, _)
    ));
    assert!(matches!(p("Observation.value is Quantity"), Expr::Is(_, _)));
    assert!(matches!(
        p("(Observation.value as Quantity).unit"),
        Expr::Member(_, _)
    ));
    assert!(matches!(p("-5.5 'mg'"), Expr::Unary('-', _)));
    assert_eq!(
        p("4 days"),
        Expr::Literal(Literal::Quantity {
            value: "4".into(),
            unit: "days".into()
        })
    );
    assert_eq!(
        p("@2019-02-03T10:00:00+01:00"),
        Expr::Literal(Literal::DateTime("2019-02-03T10:00:00+01:00".into()))
    );
    assert_eq!(p("@T14:30"), Expr::Literal(Literal::Time("14:30".into())));
    assert_eq!(p("%`vs-name`"), Expr::Constant("vs-name".into()));
    assert_eq!(
        p("'a\\'b\\u0041'"),
        Expr::Literal(Literal::String("a'bA".into()))
    );
    assert!(matches!(p("name.given[0]"), Expr::Indexer(_, _)));
    assert!(matches!(
        p("Patient.name.where(use = 'official').exists()"),
        Expr::Member(_, Invocation::Function(_, _))
    ));
    assert!(parse("1 +").is_err());
    assert!(parse("name.").is_err());
    assert!(parse("'open").is_err());
}

/// Every valid expression of the official suites parses; those marked as syntax errors must
/// not. (Semantic and execution errors may surface at parse time or later: `@T14:34:28Z`, a
/// time with a zone, is refused here already.)
#[test]
fn official_suites_parse() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fhirpath-tests"
    );
    for suite in ["r4/tests-fhir-r4.json", "r5/tests-fhir-r5.json"] {
        let Ok(text) = std::fs::read_to_string(format!("{dir}/{suite}")) else {
            eprintln!("skipping {suite}: ../shared is not beside the repository");
            continue;
        };
        let tests: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let mut failures = Vec::new();
        for t in &tests {
            let expr = t["expression"].as_str().unwrap_or("");
            let invalid = t["invalid"].as_str();
            match (parse(expr), invalid) {
                (Ok(_), Some("syntax")) => {
                    failures.push(format!("{}: parsed but is a syntax error", t["name"]));
                }
                (Err(e), None) => failures.push(format!("{} `{expr}`: {e}", t["name"])),
                _ => {}
            }
        }
        eprintln!(
            "{suite}: {} of {} expressions handled as the suite expects",
            tests.len() - failures.len(),
            tests.len()
        );
        assert!(failures.is_empty(), "{suite}: {failures:#?}");
    }
}
