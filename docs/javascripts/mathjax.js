// MathJax 3 settings for the equations that pymdownx.arithmatex (generic mode) wraps in
// \( ... \) and \[ ... \] inside elements of class "arithmatex". The \tag{N} of each
// numbered equation, which docs/scripts/mkdocs_hooks.py writes in reading order in place of the
// source's \label{eq:name}, is shown on the right.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "none"
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// The readthedocs and mkdocs themes load pages normally, so typesetting once is enough;
// with instant navigation (Material) a page swap would need MathJax.typesetPromise() again.
document.addEventListener("DOMContentLoaded", function () {
  if (window.MathJax && window.MathJax.typesetPromise) {
    window.MathJax.typesetPromise();
  }
});
