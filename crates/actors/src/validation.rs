//! Spec validation against this installation: its routes and the assertion compiler.

use chorus_core::assertion::Assertion;
use chorus_core::spec::Validator;
use chorus_llm::Routes;

pub struct SpecValidator<'a> {
    pub routes: &'a Routes,
}

impl Validator for SpecValidator<'_> {
    fn check_route(&self, model: &str) -> Result<(), String> {
        self.routes.check(model).map_err(|e| e.to_string())
    }

    fn check_assertion(&self, assertion: &Assertion) -> Result<(), String> {
        chorus_eval::check(assertion).map_err(|e| e.to_string())
    }
}
