// annuaire's pages work without this file; it only makes two things easier.
// 1. Import: a chosen file is read into the text area (which can also be pasted into).
// 2. Typed confirmations: the button stays disabled until the text typed matches.
(function () {
  "use strict";
  document.querySelectorAll("input[type=file][data-into]").forEach(function (input) {
    input.addEventListener("change", function () {
      var target = document.getElementById(input.getAttribute("data-into"));
      var file = input.files && input.files[0];
      if (!target || !file) { return; }
      var reader = new FileReader();
      reader.onload = function () { target.value = String(reader.result); };
      reader.readAsText(file);
    });
  });
  document.querySelectorAll("[data-confirm-with]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-confirm-with"));
    var typed = document.getElementById(button.getAttribute("data-confirm-typed"));
    if (!source || !typed) { return; }
    var update = function () {
      button.disabled = typed.value.trim() === "" || typed.value.trim() !== source.value.trim();
    };
    source.addEventListener("input", update);
    typed.addEventListener("input", update);
    update();
  });
})();
