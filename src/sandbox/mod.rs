//! Stateful emulators of the providers, served by `rosterd sandbox` and `rosterd demo`, and used
//! by the integration tests.
