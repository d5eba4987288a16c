"""The classroom: plots and widget explorers for the notebooks (``viz``) and the exercise checkers
(``exercises``). It builds on the core and the lab bench; nothing else in odistill imports it."""
