//! `user_id` as clients of both API generations send it. Client 1.0.6 declares
//! `$user_id: Int!`; client 1.5.1 declares `Int!` for a numeric id and `String!`
//! otherwise; the schema (as manager 1.4) takes `String!`. GraphQL validation would
//! refuse the `Int!` variable in a `String!` position, so before validation the parsed
//! document is rewritten: a variable of type `Int` used as a `user_id` argument is
//! declared `String` instead (and its value passed as a string), and an integer literal
//! given as `user_id` becomes a string literal. `2` and `"2"` are the same user.

use std::collections::HashSet;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::parser::Positioned;
use async_graphql::{Name, Value};
use async_graphql_value::Value as AstValue;

/// The argument whose integers are strings.
const USER_ID: &str = "user_id";

/// Rewrites `request` as described in the module docs; a query that does not parse is
/// left for the schema to refuse.
pub fn user_id_as_string(mut request: async_graphql::Request) -> async_graphql::Request {
    let Ok(document) = request.parsed_query() else { return request };
    let mut document: ExecutableDocument = document.clone();
    let mut variables = HashSet::new();
    for selection_set in selection_sets(&mut document) {
        rewrite(selection_set, &mut variables);
    }
    if variables.is_empty() {
        request.set_parsed_query(document);
        return request;
    }
    for operation in operations(&mut document) {
        for definition in &mut operation.node.variable_definitions {
            let definition = &mut definition.node;
            if !variables.contains(&definition.name.node) {
                continue;
            }
            if let BaseType::Named(name) = &definition.var_type.node.base {
                if name.as_str() == "Int" {
                    definition.var_type.node.base = BaseType::Named(Name::new("String"));
                }
            }
        }
    }
    for name in &variables {
        if let Some(value) = request.variables.get_mut(name) {
            if let Value::Number(n) = value {
                *value = Value::String(n.to_string());
            }
        }
    }
    request.set_parsed_query(document);
    request
}

fn operations(document: &mut ExecutableDocument) -> Vec<&mut Positioned<OperationDefinition>> {
    match &mut document.operations {
        DocumentOperations::Single(operation) => vec![operation],
        DocumentOperations::Multiple(operations) => operations.values_mut().collect(),
    }
}

fn selection_sets(document: &mut ExecutableDocument) -> Vec<&mut SelectionSet> {
    let mut sets: Vec<&mut SelectionSet> = match &mut document.operations {
        DocumentOperations::Single(operation) => vec![&mut operation.node.selection_set.node],
        DocumentOperations::Multiple(operations) => {
            operations.values_mut().map(|op| &mut op.node.selection_set.node).collect()
        }
    };
    sets.extend(document.fragments.values_mut().map(|f| &mut f.node.selection_set.node));
    sets
}

/// Rewrites literal `user_id` integers in `set` and collects the variables given as `user_id`.
fn rewrite(set: &mut SelectionSet, variables: &mut HashSet<Name>) {
    for selection in &mut set.items {
        match &mut selection.node {
            Selection::Field(field) => {
                for (name, value) in &mut field.node.arguments {
                    if name.node.as_str() != USER_ID {
                        continue;
                    }
                    match &mut value.node {
                        AstValue::Variable(variable) => {
                            variables.insert(variable.clone());
                        }
                        AstValue::Number(n) => {
                            let text = n.to_string();
                            value.node = AstValue::String(text);
                        }
                        _ => {}
                    }
                }
                rewrite(&mut field.node.selection_set.node, variables);
            }
            Selection::InlineFragment(fragment) => rewrite(&mut fragment.node.selection_set.node, variables),
            Selection::FragmentSpread(_) => {}
        }
    }
}
