"""PNG charts: a run's training curves (``training``) and the style every chart shares
(``style``). matplotlib only, through its object-oriented API on Agg canvases: pyplot keeps a
global registry of open figures and a global backend, neither thread safe nor free in a
long-lived process."""
