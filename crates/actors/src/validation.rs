//! Spec validation against this installation: its routes and the assertion compiler.

use chorus_core::assertion::Assertion;
use chorus_core::spec::Validator;
use chorus_eval::CompileError;
use chorus_llm::{Routes, UnknownRoute};

pub struct SpecValidator<'a> {
    pub routes: &'a Routes,
}

impl Validator for SpecValidator<'_> {
    type RouteError = UnknownRoute;
    type AssertionError = CompileError;

    fn check_route(&self, model: &str) -> Result<(), UnknownRoute> {
        self.routes.check(model)
    }

    fn check_assertion(&self, assertion: &Assertion) -> Result<(), CompileError> {
        chorus_eval::check(assertion)
    }
}
