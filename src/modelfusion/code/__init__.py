"""Model-written code: found in an answer (extract), its checks read from the request
(checks), the check program built (harness) and run caged in a child process (sandbox).
Nothing here ever runs model code in-process."""
