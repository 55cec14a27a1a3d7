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
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    for suite in ["r4/tests-fhir-r4.json", "r5/tests-fhir-r5.json"] {
        let text = std::fs::read_to_string(format!("{dir}/{suite}")).unwrap();
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

/// Hostile input cannot exhaust the stack: deep nesting and overlong expressions are
/// refused, and the longest accepted chain evaluates on a 2 MiB thread.
#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    assert!(parse(&format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000))).is_err());
    assert!(parse(&deep).unwrap_err().message.contains("nested"));
    let signs = format!("{}1", "-".repeat(5_000));
    assert!(parse(&signs).is_err());
    let long = format!("a{}", ".a".repeat(5_000));
    assert!(parse(&long).unwrap_err().message.contains("tokens"));
    let sum = format!("1{}", " + 1".repeat(5_000));
    assert!(parse(&sum).is_err());
    assert!(
        parse(&format!("name{}", ".given".repeat(150)))
            .unwrap_err()
            .message
            .contains("deep")
    );
    assert!(
        parse(&format!("1{}", " + 1".repeat(150)))
            .unwrap_err()
            .message
            .contains("deep")
    );
    // the deepest accepted trees evaluate on a small stack (even unoptimised)
    let chain = format!("name{}", ".given".repeat(98));
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let e = crate::Expression::parse(&chain).unwrap();
            let r = serde_json::json!({"resourceType": "Patient", "name": [{"given": ["a"]}]});
            let _ = e.evaluate(Some(&r), &crate::Env::new());
            let sum = format!("1{}", " + 1".repeat(98));
            let e = crate::Expression::parse(&sum).unwrap();
            assert_eq!(e.evaluate_json(None).unwrap(), vec![serde_json::json!(99)]);
        })
        .unwrap();
    assert!(handle.join().is_ok());
}
